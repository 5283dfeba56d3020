"""Dashboard login sessions: an opaque random id in a cookie, kept in Redis with a TTL.

A browser cannot send a bearer header to ``/``, ``/ui/…`` or the ``/events`` stream,
so ``POST /login`` (``uploader/login.py``) trades a valid API token for a session:

- the cookie holds 32 random bytes (``secrets.token_urlsafe``), never the token;
- Redis holds ``{ns}:session:<sha256 of the cookie>`` (a dump of Redis hands out no
  usable cookie) with the identity's name and a fingerprint of its token's digest,
  expiring after :data:`SESSION_TTL_S`;
- a request with the cookie gets the identity of the token it logged in with while
  that exact token is still configured: rotating or removing a token ends its
  sessions; ``POST /logout`` deletes the key, so every uploader replica sees it;
- the cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, and ``Secure`` when the
  request came over https or ``BUILDQ_API_URL`` is https.

Cross-site writes with the cookie are refused by the request guard
(``uploader/access.py``, ``uploader/origin.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from redis.asyncio import Redis
from starlette.requests import cookie_parser
from starlette.types import Scope

from shared.core.settings import Settings
from shared.redis.keys import Keys
from uploader.auth import Authenticator, Identity
from uploader.origin import header

SESSION_COOKIE = "buildq_session"
SESSION_TTL_S = 12 * 3600
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32)


def session_cookie(scope: Scope) -> str | None:
    """The session id the request's cookie carries, if well formed."""
    raw = header(scope, b"cookie")
    if raw is None:
        return None
    value = cookie_parser(raw.decode("latin-1")).get(SESSION_COOKIE)
    return value if value and SESSION_ID_RE.fullmatch(value) else None


def is_secure(scope: Scope, settings: Settings) -> bool:
    """Whether the session cookie must be ``Secure``."""
    return scope.get("scheme") == "https" or settings.api_url.lower().startswith("https://")


def cookie_header(session_id: str, *, secure: bool, max_age_s: int = SESSION_TTL_S) -> str:
    """The ``Set-Cookie`` value for ``session_id`` (an empty id with age 0 clears it)."""
    parts = [
        f"{SESSION_COOKIE}={session_id}",
        "Path=/",
        f"Max-Age={max_age_s}",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


class SessionStore:
    """Creates, reads and ends login sessions in Redis."""

    def __init__(
        self, redis: Redis, keys: Keys, auth: Authenticator, *, ttl_s: int = SESSION_TTL_S
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.auth = auth
        self.ttl_s = ttl_s

    async def create(self, identity: Identity) -> str:
        """A new session for ``identity`` (one of the configured tokens'); its id."""
        mark = self.auth.fingerprint(identity.name)
        if mark is None:
            raise ValueError(f"{identity.name} has no configured token")
        session_id = secrets.token_urlsafe(32)
        value = json.dumps({"name": identity.name, "mark": mark})
        await self.redis.set(self.keys.session(_digest(session_id)), value, ex=self.ttl_s)
        return session_id

    async def identity(self, session_id: str) -> Identity | None:
        """The identity of a live session whose token is still configured, or None."""
        raw = await self.redis.get(self.keys.session(_digest(session_id)))
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            name, mark = str(stored["name"]), str(stored["mark"])
        except (ValueError, KeyError, TypeError):
            return None
        return self.auth.by_fingerprint(name, mark)

    async def end(self, session_id: str) -> None:
        """Forget a session (logout); a no-op for one already gone."""
        await self.redis.delete(self.keys.session(_digest(session_id)))
