"""Who is calling: the :class:`Gatekeeper` the request guard (``uploader/guard.py``)
asks before routing, and :data:`Caller` for the routes that act as the caller.

With ``BUILDQ_API_TOKENS`` set, every request needs ``Authorization: Bearer <token>``
(401 otherwise) except the open paths (``/healthz``, ``/readyz``, the API docs,
the ``/sites`` and ``/preview`` redirects), ``POST /chatops``, which carries its own
Slack/Mattermost signature (``uploader/chatops.py``), and the git webhooks
``POST /hooks/{github,gitlab,gitea}``, signed with a service's webhook secret
(``uploader/hooks.py``). Without tokens (local mode)
every caller is the local admin. A ``viewer`` gets 403 on anything but
GET/HEAD/OPTIONS. Identities and role decisions are ``uploader/auth.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from shared.core.settings import Settings
from uploader.auth import Authenticator, Identity, Role, local_identity, parse_tokens
from uploader.refused import Refused

SCOPE_KEY = "buildq.identity"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PATHS |= {"/openapi.json"}
OPEN_PREFIXES = ("/sites/", "/preview/")  # redirects to the public sites origin
UNAUTHORIZED = "a valid API token is required"


HOOK_PATHS = frozenset({"/hooks/github", "/hooks/gitlab", "/hooks/gitea"})


def is_chatops(method: str, path: str) -> bool:
    """``POST /chatops``: verified by its own signature, never by a bearer token."""
    return method == "POST" and path == "/chatops"


def is_self_signed(method: str, path: str) -> bool:
    """``POST /chatops`` and the git webhooks (``uploader/hooks.py``): each verified by
    its own signature or token, never by a bearer token."""
    return is_chatops(method, path) or (method == "POST" and path in HOOK_PATHS)


def is_open(method: str, path: str) -> bool:
    """Whether anyone may call ``method path`` without a token."""
    if is_self_signed(method, path):
        return True
    if method not in SAFE_METHODS:
        return False
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class Gatekeeper:
    """Finds the caller's :class:`Identity`, or refuses the request (401 without a
    valid token, 403 for a viewer's write)."""

    def __init__(self, settings: Settings) -> None:
        raw = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
        self.auth = Authenticator(parse_tokens(raw))
        self.local = local_identity()

    @property
    def local_mode(self) -> bool:
        return self.auth.local_mode

    def identify(self, method: str, path: str, authorization: bytes | None) -> Identity | None:
        """The caller; None on an open path without a token; Refused otherwise."""
        if self.auth.local_mode:
            return self.local
        if is_self_signed(method, path):
            return None  # the chat or forge identity comes from the signed request
        if authorization is None and is_open(method, path):
            return None
        scheme, _, token = (authorization or b"").partition(b" ")
        identity = self.auth.match(token.strip()) if scheme.lower() == b"bearer" else None
        if identity is None:
            if is_open(method, path):
                return None
            raise Refused(401, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="buildq"'})
        if method not in SAFE_METHODS and identity.role is Role.VIEWER:
            raise Refused(403, f"{identity.name} is a viewer: reads only")
        return identity


def caller(request: Request) -> Identity:
    """FastAPI dependency: the identity the :class:`Gatekeeper` attached, or 401."""
    identity = request.scope.get(SCOPE_KEY)
    if not isinstance(identity, Identity):
        raise HTTPException(401, UNAUTHORIZED)
    return identity


Caller = Annotated[Identity, Depends(caller)]
