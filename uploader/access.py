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

A browser logs in instead (``uploader/login.py``): a request without an
``Authorization`` header but with a live session cookie (``uploader/session.py``)
gets the role of the token the session was opened with. A change (POST, PUT, DELETE)
made with the cookie must carry the browser's ``Origin`` (checked against the API's
own hosts by ``uploader/origin.py``) and, when sent, ``Sec-Fetch-Site: same-origin``;
the cookie is ``SameSite=Strict`` besides. An unauthenticated browser asking for a
dashboard page (``Accept: text/html``) is sent to ``/login?next=…`` (303); API
clients keep getting 401.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated
from urllib.parse import quote

import structlog
from fastapi import Depends, HTTPException, Request
from redis.exceptions import RedisError
from starlette.types import Scope

from shared.core.settings import Settings
from uploader.auth import Authenticator, Identity, Role, local_identity, parse_tokens
from uploader.origin import header
from uploader.refused import Refused
from uploader.session import SessionStore, session_cookie

log = structlog.get_logger("uploader.access")

SCOPE_KEY = "buildq.identity"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PATHS |= {"/openapi.json"}
OPEN_PREFIXES = ("/sites/", "/preview/")  # redirects to the public sites origin
UNAUTHORIZED = "a valid API token is required"


HOOK_PATHS = frozenset({"/hooks/github", "/hooks/gitlab", "/hooks/gitea"})
# The login page and its form posts, and the static files it shares with the dashboard
# (our own script and stylesheet: nothing in them is private).
LOGIN_PATHS = frozenset({"/login", "/logout"})
STATIC_PREFIX = "/ui/static/"
# Where a login may send the browser next: the dashboard's own pages, nothing else.
# Each segment starts with a letter, digit, ``_`` or ``-``: no ``.``/``..`` segments.
NEXT_RE = re.compile(r"^/(?:ui(?:/[A-Za-z0-9_-][A-Za-z0-9._~-]*)+)?$")


def is_chatops(method: str, path: str) -> bool:
    """``POST /chatops``: verified by its own signature, never by a bearer token."""
    return method == "POST" and path == "/chatops"


def is_self_signed(method: str, path: str) -> bool:
    """``POST /chatops`` and the git webhooks (``uploader/hooks.py``): each verified by
    its own signature or token, never by a bearer token."""
    return is_chatops(method, path) or (method == "POST" and path in HOOK_PATHS)


def is_form(method: str, path: str) -> bool:
    """``POST /login`` and ``/logout``: browser forms (a form body, a same-origin
    ``Origin``), open to anyone: the routes check the token or the cookie themselves."""
    return method == "POST" and path in LOGIN_PATHS


def is_open(method: str, path: str) -> bool:
    """Whether anyone may call ``method path`` without a token."""
    if is_self_signed(method, path) or is_form(method, path):
        return True
    if method not in SAFE_METHODS:
        return False
    return path in OPEN_PATHS or path in LOGIN_PATHS or path.startswith(OPEN_PREFIXES)


def is_open_static(method: str, path: str) -> bool:
    return method in SAFE_METHODS and path.startswith(STATIC_PREFIX)


def safe_next(value: str | None) -> str:
    """Where to go after login: ``value`` when it is one of the dashboard's own pages
    (a relative path: never another origin), else ``/``."""
    return value if value and NEXT_RE.fullmatch(value) else "/"


def wants_login_page(scope: Scope) -> bool:
    """A browser navigating to a dashboard page (not the API, not its static files)."""
    path = scope["path"]
    if scope["method"] not in ("GET", "HEAD"):
        return False
    if path != "/" and not (path.startswith("/ui/") and not path.startswith(STATIC_PREFIX)):
        return False
    accept = (header(scope, b"accept") or b"").decode("latin-1").lower()
    return "text/html" in accept


def login_redirect(scope: Scope) -> Refused:
    """303 to the login page, coming back to this page afterwards."""
    target = safe_next(scope["path"])
    location = "/login" if target == "/" else f"/login?next={quote(target, safe='/')}"
    return Refused(303, "log in to see the dashboard", {"Location": location})


def check_cookie_write(scope: Scope) -> None:
    """403 for a change made with the session cookie without a same-origin browser's
    headers: the ``Origin`` it must send (its host is checked by the guard next)."""
    site = header(scope, b"sec-fetch-site")
    if header(scope, b"origin") is None or (site is not None and site != b"same-origin"):
        raise Refused(403, "a change made with the login cookie must come from this site")


@functools.lru_cache(maxsize=4)
def _authenticator(raw: str) -> Authenticator:
    return Authenticator(parse_tokens(raw))


def authenticator(settings: Settings) -> Authenticator:
    """The token entries of ``settings`` (parsed once; ConfigError when malformed)."""
    return _authenticator(settings.api_tokens.get_secret_value() if settings.api_tokens else "")


class Gatekeeper:
    """Finds the caller's :class:`Identity`, or refuses the request (401 without a
    valid token, 403 for a viewer's write)."""

    def __init__(self, settings: Settings) -> None:
        self.auth = authenticator(settings)
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
        if authorization is None and (is_open(method, path) or is_open_static(method, path)):
            return None
        scheme, _, token = (authorization or b"").partition(b" ")
        identity = self.auth.match(token.strip()) if scheme.lower() == b"bearer" else None
        if identity is None:
            if is_open(method, path) or is_open_static(method, path):
                return None
            raise Refused(401, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="buildq"'})
        return self._admit(method, path, identity)

    def _admit(self, method: str, path: str, identity: Identity) -> Identity:
        if (
            method not in SAFE_METHODS
            and identity.role is Role.VIEWER
            and not is_form(method, path)
        ):
            raise Refused(403, f"{identity.name} is a viewer: reads only")
        return identity

    def sessions(self, scope: Scope) -> SessionStore | None:
        """The login sessions of the app serving ``scope`` (None before its start-up)."""
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is None:
            return None
        return SessionStore(services.redis, services.keys, self.auth)

    async def identify_request(self, scope: Scope) -> Identity | None:
        """:meth:`identify`, or the identity of a login session cookie when the request
        has no ``Authorization`` header; a browser is sent to the login page."""
        method, path = scope["method"], scope["path"]
        authorization = header(scope, b"authorization")
        if not self.auth.local_mode and authorization is None and not is_self_signed(method, path):
            identity = await self._from_cookie(scope)
            if identity is not None:
                if method not in SAFE_METHODS:
                    check_cookie_write(scope)
                return self._admit(method, path, identity)
        try:
            return self.identify(method, path, authorization)
        except Refused as exc:
            if exc.status == 401 and wants_login_page(scope):
                raise login_redirect(scope) from None
            raise

    async def _from_cookie(self, scope: Scope) -> Identity | None:
        session_id = session_cookie(scope)
        store = self.sessions(scope) if session_id is not None else None
        if session_id is None or store is None:
            return None
        try:
            return await store.identity(session_id)
        except RedisError as exc:
            log.warning("access.sessions_unavailable", error=str(exc))
            raise Refused(503, "login sessions are unavailable (redis); try again later") from None


def caller(request: Request) -> Identity:
    """FastAPI dependency: the identity the :class:`Gatekeeper` attached, or 401."""
    identity = request.scope.get(SCOPE_KEY)
    if not isinstance(identity, Identity):
        raise HTTPException(401, UNAUTHORIZED)
    return identity


Caller = Annotated[Identity, Depends(caller)]
