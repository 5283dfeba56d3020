"""shared/core/logsetup.py: one redaction processor takes secrets out of every log line."""

from __future__ import annotations

import json

import pytest
import structlog

from shared.core.logsetup import Redactor, configure_logging, redact_text, secret_values
from shared.core.settings import load_settings


def test_secret_settings_and_their_token_pieces_are_collected() -> None:
    settings = load_settings(
        {
            "BUILDQ_API_TOKENS": "alice:admin=tok-alice-123456,bob:viewer=tok-bob-654321",
            "BUILDQ_SLACK_SIGNING_SECRET": "slack-signing-secret",
        }
    )

    found = secret_values(settings)

    assert {"tok-alice-123456", "tok-bob-654321", "slack-signing-secret"} <= found
    assert "admin" not in found  # short pieces are not secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clone https://user:pa55@git.example/x.git", "clone https://***@git.example/x.git"),
        ("sent Authorization: Bearer abcdef123456", "sent Authorization: Bearer ***"),
        ("redis://:hunter22@10.0.0.1:6379/0 down", "redis://***@10.0.0.1:6379/0 down"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_urls_with_credentials_and_bearer_tokens_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_the_processor_masks_known_values_and_secret_named_fields() -> None:
    redact = Redactor({"tok-alice-123456"})

    event = redact(
        None,
        "info",
        {"event": "x", "error": "bad token tok-alice-123456", "api_token": "zzz", "n": 3},
    )

    assert event == {"event": "x", "error": "bad token ***", "api_token": "***", "n": 3}


def test_configured_logging_never_prints_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True, secrets={"tok-alice-123456"})
    try:
        structlog.get_logger("t").warning("auth.failed", detail="got tok-alice-123456")
    finally:
        structlog.reset_defaults()

    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["detail"] == "got ***"
