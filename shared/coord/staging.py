"""Staging claims: one field of ``{ns}:staging`` per environment, set by Lua check-and-set.

A claim is JSON ``{owner, branch, claimed_at, expires_at, user_id}``; an expired claim
counts as free. Claim and release each run as one script, so two people can never
both win an environment (no GET-then-HSET race).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.coord.lockbook import validate_owner
from shared.coord.replies import STAGING_CLAIM, STAGING_RELEASE, ClaimReply, Released
from shared.core.clock import Clock, now_ms
from shared.core.errors import ValidationError
from shared.core.names import validate_name
from shared.redis.keys import Keys
from shared.redis.scripts import source

BRANCH_RE = re.compile(r"^[A-Za-z0-9._/+@-]{1,255}$")


def validate_branch(value: str) -> str:
    """``value`` if it looks like a branch, tag or commit name, else ValidationError."""
    if not BRANCH_RE.fullmatch(value) or value.startswith("-") or ".." in value:
        raise ValidationError(f"invalid branch {value[:80]!r}")
    return value


@dataclass(frozen=True, slots=True)
class Claim:
    """Who has a staging environment, for what, until when (None: no expiry)."""

    env: str
    owner: str
    branch: str | None
    claimed_at: int
    expires_at: int | None = None
    user_id: str | None = None

    @classmethod
    def parse(cls, env: str, raw: str | bytes) -> Claim:
        """Decode a stored JSON claim."""
        data: dict[str, Any] = json.loads(raw)
        expires = data.get("expires_at")
        return cls(
            env=env,
            owner=str(data["owner"]),
            branch=data.get("branch") or None,
            claimed_at=int(data["claimed_at"]),
            expires_at=int(expires) if expires is not None else None,
            user_id=data.get("user_id") or None,
        )

    def expired(self, at_ms: int) -> bool:
        """True once the claim's expiry has passed: the environment is free."""
        return self.expires_at is not None and self.expires_at <= at_ms

    def public(self) -> dict[str, Any]:
        """The claim as the API shows it."""
        return asdict(self)


class Staging:
    """Claims on staging environments."""

    def __init__(
        self, redis: Redis, keys: Keys, *, events_max: int, clock: Clock = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.events_max = events_max
        self.clock = clock
        self._claim: AsyncScript = redis.register_script(source("staging_claim"))
        self._release: AsyncScript = redis.register_script(source("staging_release"))

    async def claim(
        self,
        env: str,
        *,
        owner: str,
        branch: str | None = None,
        ttl_s: int | None = None,
        user_id: str | None = None,
    ) -> tuple[bool, Claim]:
        """``(True, claim)`` when claimed or renewed by its owner (``claimed_at``
        kept); ``(False, current)`` when someone else holds an unexpired claim."""
        env, owner = validate_name(env, "environment"), validate_owner(owner)
        now = now_ms(self.clock)
        claim = {
            "owner": owner,
            "branch": validate_branch(branch) if branch else None,
            "claimed_at": now,
            "expires_at": now + ttl_s * 1000 if ttl_s else None,
            "user_id": user_id,
        }
        reply = await self._claim(
            keys=[self.keys.staging, self.keys.events],
            args=[env, json.dumps(claim, separators=(",", ":")), owner, now, self.events_max],
        )
        return STAGING_CLAIM(reply[0]) is ClaimReply.CLAIMED, Claim.parse(env, reply[1])

    async def release(
        self, env: str, *, owner: str, force: bool = False
    ) -> tuple[Released, Claim | None]:
        """Release ``env`` if ``owner`` claimed it, or whoever did with ``force`` (the
        caller checks that ``owner`` is an admin)."""
        env, owner = validate_name(env, "environment"), validate_owner(owner)
        reply = await self._release(
            keys=[self.keys.staging, self.keys.events],
            args=[env, owner, int(force), now_ms(self.clock), self.events_max],
        )
        outcome = STAGING_RELEASE(reply[0])
        if outcome is Released.NOT_HELD:
            return outcome, None
        return outcome, Claim.parse(env, reply[1])

    async def get(self, env: str) -> Claim | None:
        """The unexpired claim on ``env``, or None."""
        raw = await self.redis.hget(self.keys.staging, validate_name(env, "environment"))
        if not raw:
            return None
        claim = Claim.parse(env, raw)
        return None if claim.expired(now_ms(self.clock)) else claim

    async def claims(self) -> list[Claim]:
        """Every unexpired claim, by environment name."""
        raw = await self.redis.hgetall(self.keys.staging)
        now = now_ms(self.clock)
        found = (Claim.parse(str(env), value) for env, value in raw.items())
        return sorted((c for c in found if not c.expired(now)), key=lambda c: c.env)
