"""One frozen settings object, built from ``BUILDQ_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.core.errors import ConfigError

ENV_PREFIX = "BUILDQ_"
DOMAIN_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_STATUS_API_URLS = "github=https://api.github.com"  # gitlab/gitea: your instance


class Settings(BaseSettings):
    """Everything an operator can set. Unknown ``BUILDQ_*`` variables are errors."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    namespace: str = Field("buildq", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # BUILDQ_REDIS_URL is a seed node of a Redis Cluster
    redis_sentinels: str = ""  # host:port,host:port: find the primary through Sentinel
    redis_sentinel_service: str = Field("buildq", min_length=1, max_length=200)
    s3_endpoint_url: str | None = None
    s3_bucket: str = "buildq"
    s3_region: str = "us-east-1"
    # A directory on this host instead of S3 (shared/storage/localdir.py): one host only.
    storage_dir: Path | None = None

    api_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Sites have their own origin: http://<service>.<sites_domain>:<sites_port>/ on
    # the uploader's second listener; previews at <id>.preview.<sites_domain>.
    sites_domain: str = Field("localhost", min_length=1, max_length=190)
    sites_port: int = Field(8001, ge=1, le=65535)  # default: BUILDQ_PORT + 1
    sites_scheme: Literal["auto", "http", "https"] = "auto"
    sites_public_port: int | None = Field(None, ge=0, le=65535)  # 0: none in links
    # name:role[:svc|glob...]=token entries (uploader/auth.py); none: local mode
    api_tokens: SecretStr | None = None
    api_token: SecretStr | None = None  # the token the CLI sends (one of api_tokens)
    # Host header values the API answers (any port); the API URL's host is added.
    # Unset: 127.0.0.1, localhost and [::1], enforced in local mode (no tokens).
    allowed_hosts: str | None = Field(None, max_length=4096)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    submit_rate_per_min: int = Field(60, ge=0)  # per identity; 0 turns the limit off
    slack_signing_secret: SecretStr | None = None
    mattermost_token: SecretStr | None = None
    # A Fernet key (shared/coord/secrets.py): service secrets and webhook secrets are
    # stored encrypted with it; without it buildq refuses to store either.
    secrets_key: SecretStr | None = None
    chat_users: str = Field("", max_length=65536)  # team:user=name,... (chat identities)
    lock_default_ttl_s: int = Field(3600, ge=1, le=30 * 24 * 3600)
    claim_default_ttl_s: int = Field(0, ge=0, le=365 * 24 * 3600)  # 0: claims do not expire

    allow_local_repos: bool = False
    allow_eviction: bool = False  # run on a Redis whose maxmemory-policy may evict keys
    repo_host_allowlist: str = ""  # comma-separated host globs (*.example.com); empty: any
    repo_host_denylist: str = ""
    git_tokens: SecretStr | None = None  # host=token[,host=user:token]: private repositories
    # Commit statuses back to the forge of a webhook's deploy (uploader/statuses.py):
    # forge=token entries (github, gitlab, gitea), sent only to that forge's API URL.
    status_tokens: SecretStr | None = None
    status_api_urls: str = Field(DEFAULT_STATUS_API_URLS, max_length=4096)  # forge=url,...
    clone_timeout_s: float = Field(120.0, gt=0)
    build_timeout_s: float = Field(600.0, gt=0)
    ingest_slots: int = Field(2, ge=1, le=64)
    deployer_slots: int = Field(2, ge=1, le=256)
    upload_concurrency: int = Field(16, ge=1, le=256)

    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    jobs_index_max: int = Field(10_000, ge=100)
    log_max_entries: int = Field(20_000, ge=100)
    log_max_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    events_max_entries: int = Field(10_000, ge=100)
    redis_max_connections: int = Field(32, ge=2, le=10_000)  # pooled, per process
    max_log_streams: int = Field(256, ge=1, le=100_000)  # open SSE log streams per uploader

    max_source_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    max_source_files: int = Field(100_000, ge=1)
    max_output_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    max_output_files: int = Field(100_000, ge=1)
    keep_deployments: int = Field(10, ge=1, le=100_000)  # per service, for rollback (buildq gc)

    build_cpu_s: int = Field(900, ge=1)
    build_memory_mb: int = Field(4096, ge=64)
    build_file_mb: int = Field(1024, ge=1)
    build_sandbox: Literal["auto", "bwrap", "uid", "process"] = "auto"
    build_network: Literal["on", "off"] = "on"
    build_uid_base: int = Field(60900, ge=1000, le=2**31 - 70000)
    build_uid_count: int = Field(64, ge=1, le=65536)
    build_max_procs: int = Field(1024, ge=16)
    build_cpus: float = Field(0.0, ge=0, le=1024)  # cgroup CPU quota of a build; 0: none
    build_limits: Literal["auto", "cgroup", "rlimit"] = "auto"
    build_cgroup: Path | None = None  # a delegated cgroup v2 directory for build groups
    # Dependency caches per service in the bucket (deployer/cache.py); a service's
    # caches together larger than build_cache_mb (unpacked) are not saved.
    build_cache: bool = True
    build_cache_mb: int = Field(1024, ge=1)
    grace_period_s: float = Field(25.0, ge=0)
    heartbeat_interval_s: float = Field(2.0, gt=0, le=60)
    deploy_lock_ttl_s: float = Field(30.0, ge=1)
    lock_wait_s: float = Field(2.0, ge=0)
    lock_recheck_s: float = Field(1.0, gt=0)
    lock_max_wait_s: float = Field(3600.0, gt=0)  # a job waiting longer for a lock fails
    worker_stale_s: float = Field(15.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=100)
    retry_base_s: float = Field(1.0, gt=0)
    retry_cap_s: float = Field(60.0, gt=0)
    idempotency_ttl_s: int = Field(24 * 3600, ge=1)

    data_dir: Path = Path(".buildq")
    work_dir: Path | None = None
    log_level: str = "info"
    log_json: bool | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only explicit values: :func:`load_settings` reads and checks the environment."""
        return (init_settings,)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("secrets_key")
    @classmethod
    def _fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        """A key Fernet accepts: 32 url-safe base64-encoded bytes (never echoed)."""
        if value is None or not value.get_secret_value():
            return None
        raw = value.get_secret_value().strip().encode("ascii", "replace")
        with contextlib.suppress(ValueError, binascii.Error):
            if len(base64.urlsafe_b64decode(raw)) == 32 and len(raw) == 44:
                return SecretStr(raw.decode())
        raise ValueError(
            "must be a Fernet key (32 url-safe base64-encoded bytes), e.g. from python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )

    @field_validator("sites_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        labels = value.split(".")
        if not all(DOMAIN_LABEL_RE.fullmatch(label) for label in labels):
            raise ValueError("must be a DNS name such as localhost or sites.example.net")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sites_port_follows_port(cls, values: Any) -> Any:
        if isinstance(values, dict) and "sites_port" not in values and "port" in values:
            with contextlib.suppress(TypeError, ValueError):  # the port's check says why
                values = {**values, "sites_port": int(values["port"]) % 65535 + 1}
        return values

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _storage_dir(cls, value: Any) -> Any:
        return None if value == "" else value  # empty: unset, not the current directory

    @model_validator(mode="after")
    def _one_storage(self) -> Settings:
        if self.storage_dir is not None and self.s3_endpoint_url:
            raise ValueError(
                "set BUILDQ_STORAGE_DIR (a local directory) or BUILDQ_S3_ENDPOINT_URL (S3), "
                "not both"
            )
        return self

    @model_validator(mode="after")
    def _ports(self) -> Settings:
        if self.sites_port == self.port:
            raise ValueError(
                "BUILDQ_SITES_PORT must differ from BUILDQ_PORT: sites have their own origin"
            )
        return self


# Settings that existed once, with what replaced them.
REMOVED = {
    "BUILDQ_ADMINS": (
        "admins are identities with the admin role now: give each one an entry "
        "name:admin=token in BUILDQ_API_TOKENS (and map chat users with BUILDQ_CHAT_USERS)"
    ),
}


def _unknown_keys(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        k for k in environ if k.startswith(ENV_PREFIX) and k not in known and k not in REMOVED
    )


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default: the process environment).

    Fails at once, naming the key, on an unknown or invalid ``BUILDQ_*`` variable.
    """
    env = dict(os.environ if environ is None else environ)
    removed = sorted(k for k in env if k in REMOVED)
    if removed:
        raise ConfigError("; ".join(f"{k} is no longer supported: {REMOVED[k]}" for k in removed))
    unknown = _unknown_keys(env)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {
        name: env[ENV_PREFIX + name.upper()]
        for name in Settings.model_fields
        if ENV_PREFIX + name.upper() in env
    }
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
