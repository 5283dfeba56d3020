"""shared/core/settings.py: defaults, environment parsing, and failing loudly by key name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from shared.core.errors import ConfigError
from shared.core.settings import load_settings


def test_defaults_without_any_buildq_variable() -> None:
    s = load_settings({})

    assert s.namespace == "buildq"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.s3_endpoint_url is None
    assert s.s3_bucket == "buildq"
    assert s.port == 8000
    assert s.api_tokens is None
    assert s.allow_local_repos is False
    assert s.build_timeout_s == 600.0
    assert s.jobs_index_max == 10_000
    assert s.log_level == "info"
    assert s.data_dir == Path(".buildq")
    assert (s.sites_domain, s.sites_port) == ("localhost", 8001)


def test_environment_values_are_coerced_to_their_types() -> None:
    s = load_settings(
        {
            "BUILDQ_PORT": "9090",
            "BUILDQ_ALLOW_LOCAL_REPOS": "true",
            "BUILDQ_BUILD_TIMEOUT_S": "12.5",
            "BUILDQ_DATA_DIR": "/var/lib/buildq",
            "BUILDQ_LOG_LEVEL": "DEBUG",
            "BUILDQ_LOG_JSON": "0",
            "BUILDQ_S3_ENDPOINT_URL": "http://minio:9000",
        }
    )

    assert s.port == 9090
    assert s.allow_local_repos is True
    assert s.build_timeout_s == 12.5
    assert s.data_dir == Path("/var/lib/buildq")
    assert s.log_level == "debug"
    assert s.log_json is False
    assert s.s3_endpoint_url == "http://minio:9000"


def test_variables_without_the_buildq_prefix_are_ignored() -> None:
    s = load_settings({"PORT": "1", "HOME": "/root", "AWS_REGION": "eu-west-1"})

    assert s.port == 8000


def test_keyword_overrides_win_over_the_environment() -> None:
    s = load_settings({"BUILDQ_PORT": "9090"}, port=7070)

    assert s.port == 7070


def test_sites_domain_is_normalised_and_checked() -> None:
    assert load_settings({"BUILDQ_SITES_DOMAIN": "Sites.Example.NET."}).sites_domain == (
        "sites.example.net"
    )
    for bad in ("exa mple.net", "-x.example", "a..b", "evil.com/x", "x:80"):
        with pytest.raises(ConfigError, match="BUILDQ_SITES_DOMAIN"):
            load_settings({"BUILDQ_SITES_DOMAIN": bad})


def test_the_sites_port_follows_the_api_port_unless_set() -> None:
    assert load_settings({"BUILDQ_PORT": "9000"}).sites_port == 9001
    assert load_settings({"BUILDQ_PORT": "9000", "BUILDQ_SITES_PORT": "7000"}).sites_port == 7000


def test_sites_need_their_own_port() -> None:
    with pytest.raises(ConfigError, match="BUILDQ_SITES_PORT must differ from BUILDQ_PORT"):
        load_settings({"BUILDQ_PORT": "9000", "BUILDQ_SITES_PORT": "9000"})


def test_unknown_buildq_variable_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="BUILDQ_REDIS_URI"):
        load_settings({"BUILDQ_REDIS_URI": "redis://x", "BUILDQ_PORT": "1"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BUILDQ_PORT", "eighty"),
        ("BUILDQ_PORT", "70000"),
        ("BUILDQ_NAMESPACE", "Has Spaces"),
        ("BUILDQ_BUILD_TIMEOUT_S", "0"),
        ("BUILDQ_ALLOW_LOCAL_REPOS", "perhaps"),
        ("BUILDQ_LOG_LEVEL", "verbose"),
        ("BUILDQ_JOBS_INDEX_MAX", "5"),
    ],
)
def test_invalid_value_is_a_config_error_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({key: value})

    assert key in str(info.value)
    assert isinstance(info.value.__cause__, PydanticValidationError)


def test_secret_tokens_are_not_leaked_by_repr_or_str() -> None:
    s = load_settings({"BUILDQ_API_TOKENS": "sup3r-s3cret-token"})

    assert isinstance(s.api_tokens, SecretStr)
    assert s.api_tokens.get_secret_value() == "sup3r-s3cret-token"
    assert "sup3r-s3cret-token" not in repr(s)
    assert "sup3r-s3cret-token" not in str(s)
    assert "sup3r-s3cret-token" not in repr(s.model_dump())


def test_settings_are_frozen() -> None:
    s = load_settings({})

    with pytest.raises(PydanticValidationError, match="frozen"):
        s.port = 1  # type: ignore[misc]
    assert s.port == 8000


def test_explicit_environ_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_settings(environ)`` reads ``environ``, not the process environment."""
    monkeypatch.setenv("BUILDQ_PORT", "9999")
    monkeypatch.setenv("BUILDQ_S3_BUCKET", "from-process-env")

    s = load_settings({})

    assert s.port == 8000
    assert s.s3_bucket == "buildq"
