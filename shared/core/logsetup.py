"""structlog configuration: JSON when not a TTY, console when it is; contextvars bound."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from pydantic import SecretStr

from shared.core.settings import Settings

URL_CREDENTIALS_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
BEARER_RE = re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
SECRET_FIELD_RE = re.compile(r"(?i)(token|secret|password|passwd|authorization|api_key|cookie)")
MIN_SECRET_CHARS = 6  # shorter pieces are not searched for (too many false hits)
MASK = "***"


def secret_values(settings: Settings) -> set[str]:
    """Every secret setting's value and its token-like pieces (``name:role=token``)."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if not isinstance(value, SecretStr):
            continue
        raw = value.get_secret_value()
        found.add(raw)
        for entry in raw.split(","):
            found.add(entry.strip())
            found.update(part.strip() for part in re.split(r"[=:]", entry))
    return {v for v in found if len(v) >= MIN_SECRET_CHARS}


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without URL credentials, bearer tokens or any of ``secrets``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = URL_CREDENTIALS_RE.sub(lambda m: m.group(1) + MASK + "@", text)
    return BEARER_RE.sub(lambda m: m.group(1) + " " + MASK, text)


class Redactor:
    """structlog processor: the one place secrets are taken out of log output."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(secrets)

    def _clean(self, key: str, value: Any) -> Any:
        if isinstance(value, str):
            return MASK if SECRET_FIELD_RE.search(key) else redact_text(value, self.secrets)
        if isinstance(value, dict):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(key, v) for v in value]
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            event[key] = self._clean("" if key == "event" else key, value)
        return event


def configure_logging(
    level: str = "info", *, json: bool | None = None, secrets: Iterable[str] = ()
) -> None:
    """Configure structlog and the stdlib root logger once per process; ``secrets``
    (see :func:`secret_values`) never appear in what it prints."""
    use_json = (not sys.stdout.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            Redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stdout, format="%(name)s %(message)s")
    # boto and git are chatty at INFO; their failures surface through our own errors.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
