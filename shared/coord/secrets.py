"""Service secrets: values only that service's builds receive, encrypted at rest.

Values are sealed with Fernet (``cryptography``) under ``BUILDQ_SECRETS_KEY`` before
they reach Redis; without a key nothing is stored (:class:`ConfigError`). A secret's
value is never part of a record, an API answer, a log line, an S3 object or a
command line: :meth:`SecretStore.names` lists names and update times only, and
:func:`build_secrets` is the one way to read values back, for the deployer to put
into a build's environment inside its sandbox. Webhook secrets (``services.py``) are
sealed the same way.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from shared.core.buildenv import MAX_ENTRIES, refusal
from shared.core.clock import Clock, now_ms
from shared.core.errors import ConfigError, ValidationError
from shared.core.settings import Settings
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

SECRET_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
MAX_VALUE_BYTES = 16 * 1024
NO_KEY = (
    "BUILDQ_SECRETS_KEY is not set: buildq stores secrets only encrypted; generate a key "
    "with python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


def cipher(settings: Settings) -> Fernet:
    """The Fernet of ``BUILDQ_SECRETS_KEY``, or ConfigError when there is none."""
    # Imported here: cryptography costs a process ~7 MiB, and a deployer needs it only
    # for a service that has secrets.
    from cryptography.fernet import Fernet

    if settings.secrets_key is None:
        raise ConfigError(NO_KEY)
    return Fernet(settings.secrets_key.get_secret_value().encode("ascii"))


def seal(settings: Settings, value: str) -> str:
    """``value`` encrypted (a Fernet token); ConfigError without a key."""
    return cipher(settings).encrypt(value.encode("utf-8")).decode("ascii")


def unseal(settings: Settings, token: str, what: str) -> str:
    """A :func:`seal`-ed value; ConfigError if the key is missing or is not the one
    it was sealed with (the message names ``what``, never the value)."""
    from cryptography.fernet import InvalidToken  # see cipher()

    try:
        return cipher(settings).decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise ConfigError(
            f"cannot decrypt {what}: it was stored under another BUILDQ_SECRETS_KEY"
        ) from None


def validate_secret_name(name: str) -> str:
    """An environment variable name a build may receive, or ValidationError."""
    if not SECRET_NAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid secret name {name[:80]!r}: use 1-128 of A-Z, 0-9 and '_', "
            "not starting with a digit"
        )
    why = refusal(name)
    if why is not None:
        raise ValidationError(f"invalid secret name: {why}")
    return name


def validate_secret_value(value: str) -> str:
    """A value an environment can carry, or ValidationError (never echoing it)."""
    if "\x00" in value:
        raise ValidationError("a secret value must not contain NUL characters")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise ValidationError(f"a secret value must be at most {MAX_VALUE_BYTES} bytes")
    return value


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What anyone may learn about a secret: its name and when it was last set."""

    name: str
    updated_at: int


class SecretStore:
    """A service's secrets in ``{ns}:secrets:<service>`` (name -> sealed value)."""

    def __init__(
        self, redis: Redis, keys: Keys, settings: Settings, *, clock: Clock = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.clock = clock

    async def put(self, service: str, name: str, value: str) -> SecretInfo:
        """Store (or replace) one secret; ValidationError or ConfigError change nothing."""
        validate_secret_name(name)
        validate_secret_value(value)
        sealed = seal(self.settings, value)
        key = self.keys.secrets(service)
        if not await self.redis.hexists(key, name) and await self.redis.hlen(key) >= MAX_ENTRIES:
            raise ValidationError(f"a service may have at most {MAX_ENTRIES} secrets")
        info = SecretInfo(name, now_ms(self.clock))
        entry = json.dumps({"token": sealed, "updated_at": info.updated_at})
        await self.redis.hset(key, name, entry)
        return info

    async def names(self, service: str) -> list[SecretInfo]:
        """The service's secrets by name, without values."""
        raw = await self.redis.hgetall(self.keys.secrets(service))
        infos = [SecretInfo(str(n), int(json.loads(v)["updated_at"])) for n, v in raw.items()]
        return sorted(infos, key=lambda info: info.name)

    async def delete(self, service: str, name: str) -> bool:
        """Remove one secret; False if there was none of that name."""
        validate_secret_name(name)
        return bool(await self.redis.hdel(self.keys.secrets(service), name))

    async def reveal(self, service: str) -> dict[str, str]:
        """Every value in the clear: for :func:`build_secrets` only."""
        raw = await self.redis.hgetall(self.keys.secrets(service))
        return {
            str(name): unseal(self.settings, json.loads(entry)["token"], "secret " + str(name))
            for name, entry in raw.items()
        }


async def build_secrets(
    redis: Redis, keys: Keys, settings: Settings, service: str
) -> dict[str, str]:
    """The environment a build of ``service`` receives from its secrets ({} if none).

    Raises ConfigError when secrets exist but cannot be decrypted (no or another
    ``BUILDQ_SECRETS_KEY``): a build must not run without the secrets it was promised.
    The caller passes the result only to the sandboxed build's environment.
    """
    return await SecretStore(redis, keys, settings).reveal(service)
