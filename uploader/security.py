"""ASGI middleware in front of every API route: who is calling, trusted hosts, no
cross-site writes, body cap, JSON hygiene, rate limit.

- **Identity** (``uploader/auth.py``): with ``BUILDQ_API_TOKENS`` set, every request
  needs ``Authorization: Bearer <token>`` (401 otherwise) except the open paths
  (``/healthz``, ``/readyz``, the API docs, ``/``, the ``/sites`` and ``/preview``
  redirects) and ``POST /chatops``, which carries its own Slack/Mattermost
  signature. Without tokens (local mode) every caller is the local admin. The
  identity rides in the ASGI scope; routes read it with ``auth.Caller``. A
  ``viewer`` gets 403 on anything but GET/HEAD/OPTIONS.
- **Trusted hosts**: in local mode (or whenever ``BUILDQ_ALLOWED_HOSTS`` is set) the
  ``Host`` header must name an allowed host (any port) or the answer is 400: a page
  that rebinds its DNS name to 127.0.0.1 is not the API's origin.
- **No cross-site writes**: a state-changing request needs ``Content-Type:
  application/json`` or an ``Authorization`` header (415 otherwise: a foreign page
  cannot send either without a CORS preflight), and a foreign ``Origin`` is 403.
- Bodies over ``BUILDQ_MAX_BODY_BYTES`` are refused with 413 before they are read
  whole (Content-Length, then a running count for chunked bodies).
- JSON bodies are parsed once here, strictly: UTF-8 only, no NaN/Infinity, no
  duplicate keys, no lone surrogates, bounded nesting, a top-level object. Every
  refusal is a 4xx with the API's error shape; nothing malformed reaches a route.
- ``POST /deployments`` is checked against the operator's repository host lists
  and rate limited per identity (``uploader/ratelimit.py``): 429 with Retry-After.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.core.errors import ConfigError, TransientError, ValidationError
from shared.core.settings import Settings
from uploader.auth import (
    SCOPE_KEY,
    Authenticator,
    Identity,
    Role,
    local_identity,
    parse_chat_users,
    parse_tokens,
)
from uploader.clone import clone_settings
from uploader.errors import error_response
from uploader.ratelimit import submission_wait_s
from uploader.repourl import validate_repo_url

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PATHS |= {"/openapi.json"}
OPEN_PREFIXES = ("/sites/", "/preview/")  # redirects to the public sites origin
DEFAULT_HOSTS = "127.0.0.1,localhost,[::1]"
MAX_DEPTH = 32


class Refused(Exception):
    """A request refused before it reaches a route."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _reject_constant(name: str) -> Any:
    raise Refused(400, f"invalid JSON: {name} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Refused(400, f"invalid JSON: duplicate key {key[:60]!r}")
        result[key] = value
    return result


def _check_values(document: Any) -> None:
    """Walk ``document`` without recursion: depth, surrogates, finite numbers."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(400, f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(400, "invalid JSON: string with a lone surrogate") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise Refused(400, "invalid JSON: number out of range")
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Refused (400 malformed, 422 not an object)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "request body must be UTF-8 encoded JSON") from None
    try:
        document = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates
        )
    except RecursionError:
        raise Refused(400, "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise Refused(400, f"invalid JSON: {str(exc)[:200]}") from None
    _check_values(document)
    if not isinstance(document, dict):
        raise Refused(422, "request body must be a JSON object")
    return document


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def _host_name(value: str) -> str | None:
    """The host of a ``Host`` header or URL authority, without port, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        return host
    host, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return host or None


def allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """``BUILDQ_ALLOWED_HOSTS`` (default loopback names) plus the API URL's host."""
    raw = settings.allowed_hosts if settings.allowed_hosts is not None else DEFAULT_HOSTS
    hosts = [h.strip().lower().strip("[]") for h in raw.split(",") if h.strip()]
    api_host = urlsplit(settings.api_url).hostname
    if api_host:
        hosts.append(api_host.lower())
    return tuple(dict.fromkeys(hosts))


def host_allowed(host: str | None, patterns: tuple[str, ...]) -> bool:
    """True when ``host`` matches an allowed name, ``*``, or a ``*.suffix`` pattern."""
    if not host:
        return False
    for pattern in patterns:
        if pattern in ("*", host):
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _open_path(method: str, path: str) -> bool:
    if method == "POST" and path == "/chatops":
        return True  # verified by its own signature (uploader/chatops.py)
    if method not in SAFE_METHODS:
        return False
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class SecurityMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        raw = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
        self.auth = Authenticator(parse_tokens(raw))
        self.local = local_identity()
        self.hosts = allowed_hosts(settings)
        self.check_host = self.auth.local_mode or settings.allowed_hosts is not None
        self.repo_hosts = clone_settings(settings).hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        try:
            self._check_host(scope)
            identity = self._authenticate(scope, method, path)
            if identity is not None:
                scope[SCOPE_KEY] = identity
            if method not in SAFE_METHODS and not (method == "POST" and path == "/chatops"):
                self._check_cross_site(scope, identity)
            body = b"" if method in ("GET", "HEAD") else await self._read(scope, receive)
            document = None
            if body and _is_json((_header(scope, b"content-type") or b"").decode("latin-1")):
                document = parse_json_body(body)
            if method == "POST" and path.rstrip("/") == "/deployments" and identity:
                self._check_submission(document)
                await self._rate_limit(scope, identity)
        except Refused as exc:
            response = error_response(exc.status, exc.message)
            response.headers.update(exc.headers)
            await response(scope, receive, send)
            return
        if method in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_host(self, scope: Scope) -> None:
        if not self.check_host:
            return
        given = (_header(scope, b"host") or b"").decode("latin-1")
        if not host_allowed(_host_name(given), self.hosts):
            raise Refused(
                400, f"host {given[:100]!r} is not an allowed host (BUILDQ_ALLOWED_HOSTS)"
            )

    def _authenticate(self, scope: Scope, method: str, path: str) -> Identity | None:
        """The caller; None on an open path without a token; 401 or 403 otherwise."""
        if self.auth.local_mode:
            return self.local
        if method == "POST" and path == "/chatops":
            return None  # the chat identity comes from the signed request, never a token
        given = _header(scope, b"authorization")
        if given is None and _open_path(method, path):
            return None
        scheme, _, token = (given or b"").partition(b" ")
        identity = self.auth.match(token.strip()) if scheme.lower() == b"bearer" else None
        if identity is None:
            if _open_path(method, path):
                return None
            raise Refused(
                401, "a valid API token is required", {"WWW-Authenticate": 'Bearer realm="buildq"'}
            )
        if method not in SAFE_METHODS and identity.role is Role.VIEWER:
            raise Refused(403, f"{identity.name} is a viewer: reads only")
        return identity

    def _check_cross_site(self, scope: Scope, identity: Identity | None) -> None:
        """403 for a foreign Origin; 415 for a body a cross-site form could send."""
        origin = _header(scope, b"origin")
        if origin is not None:
            parts = urlsplit(origin.decode("latin-1").strip())
            try:
                port = parts.port
            except ValueError:
                port = None
            on_sites = port == self.settings.sites_port != self.settings.port
            if not host_allowed(parts.hostname, self.hosts) or on_sites:
                raise Refused(403, "cross-origin requests may not change anything")
        if _header(scope, b"authorization") is not None:
            return  # a foreign page cannot set it without a CORS preflight
        media = (_header(scope, b"content-type") or b"").decode("latin-1")
        if media.split(";", 1)[0].strip().lower() != "application/json":
            raise Refused(
                415, "state-changing requests need Content-Type: application/json (or a token)"
            )

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        cap = self.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refused(400, "invalid Content-Length header")
            if int(declared) > cap:
                raise Refused(413, f"request body larger than {cap} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise Refused(413, f"request body larger than {cap} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _check_submission(self, document: dict[str, Any] | None) -> None:
        url = document.get("repo_url") if document else None
        if not isinstance(url, str):
            return  # the route's own validation names the missing field
        try:
            validate_repo_url(
                url, allow_local=self.settings.allow_local_repos, hosts=self.repo_hosts
            )
        except ValidationError as exc:
            raise Refused(422, str(exc)) from None
        except TransientError as exc:  # the resolver, for now: the caller may retry
            raise Refused(503, f"{exc}; try again later", {"Retry-After": "5"}) from None

    async def _rate_limit(self, scope: Scope, identity: Identity) -> None:
        services = getattr(scope["app"].state, "services", None)
        if services is None:
            return
        try:
            wait_s = await submission_wait_s(services, identity.name)
        except RedisError as exc:
            raise Refused(503, f"redis unavailable: {exc}") from None
        if wait_s:
            limit = self.settings.submit_rate_per_min
            raise Refused(
                429,
                f"more than {limit} submissions per minute for {identity.name}; retry later",
                {"Retry-After": str(wait_s)},
            )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the middleware; malformed security settings stop start-up (ConfigError)."""
    try:
        clone_settings(settings)
    except ValueError as exc:
        raise ConfigError(f"BUILDQ_GIT_TOKENS: {exc}") from None
    parse_tokens(settings.api_tokens.get_secret_value() if settings.api_tokens else None)
    parse_chat_users(settings.chat_users)
    app.add_middleware(SecurityMiddleware, settings=settings)
