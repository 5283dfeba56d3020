"""ASGI middleware in front of every route: tokens, body cap, JSON hygiene, rate limit.

- Mutating methods (anything but GET, HEAD, OPTIONS) need ``Authorization: Bearer
  <token>`` whenever ``BUILDQ_API_TOKENS`` is set; compared with
  ``hmac.compare_digest`` on bytes against every configured token. ``POST
  /chatops`` is exempt: it carries its own Slack/Mattermost signature.
- Bodies over ``BUILDQ_MAX_BODY_BYTES`` are refused with 413 before they are read
  whole (Content-Length, then a running count for chunked bodies).
- JSON bodies are parsed once here, strictly: UTF-8 only, no NaN/Infinity, no
  duplicate keys, no lone surrogates, bounded nesting, a top-level object. Every
  refusal is a 4xx with the API's error shape; nothing malformed reaches a route.
- ``POST /deployments`` is checked against the operator's repository host lists
  and rate limited per token (``BUILDQ_SUBMIT_RATE_PER_MIN``, a fixed one-minute
  window counted in Redis so it holds across uploader replicas): 429 with
  Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ConfigError, ValidationError
from shared.settings import Settings
from uploader.clone import clone_settings
from uploader.errors import error_response
from uploader.repourl import validate_repo_url

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_EXEMPT = frozenset({("POST", "/chatops")})
MAX_DEPTH = 32
WINDOW_MS = 60_000


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


class SecurityMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        raw = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
        self.tokens = [t.strip().encode() for t in raw.split(",") if t.strip()]
        self.hosts = clone_settings(settings).hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        try:
            identity = self._authenticate(scope, method, path)
            body = b"" if method in ("GET", "HEAD") else await self._read(scope, receive)
            document = None
            if body and _is_json((_header(scope, b"content-type") or b"").decode("latin-1")):
                document = parse_json_body(body)
            if method == "POST" and path.rstrip("/") == "/deployments":
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

    def _authenticate(self, scope: Scope, method: str, path: str) -> str | None:
        """The caller's token identity (a hash), or None when tokens are off."""
        if not self.tokens or method in SAFE_METHODS or (method, path) in TOKEN_EXEMPT:
            return None
        given = _header(scope, b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        matched = False
        for known in self.tokens:  # no early exit: every token costs the same
            matched |= hmac.compare_digest(token.strip(), known)
        if scheme.lower() != b"bearer" or not matched:
            raise Refused(
                401, "a valid API token is required", {"WWW-Authenticate": 'Bearer realm="buildq"'}
            )
        return hashlib.sha256(token.strip()).hexdigest()[:24]

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
            validate_repo_url(url, allow_local=self.settings.allow_local_repos, hosts=self.hosts)
        except ValidationError as exc:
            raise Refused(422, str(exc)) from None

    async def _rate_limit(self, scope: Scope, identity: str | None) -> None:
        limit = self.settings.submit_rate_per_min
        services = getattr(scope["app"].state, "services", None)
        if identity is None or limit <= 0 or services is None:
            return
        now = int(time.time() * 1000)
        window = now // WINDOW_MS
        key = services.keys.rate(identity, window)
        try:
            pipe = services.redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.pexpire(key, WINDOW_MS * 2)
            count, _ = await pipe.execute()
        except RedisError as exc:
            raise Refused(503, f"redis unavailable: {exc}") from None
        if int(count) > limit:
            retry_s = max(1, math.ceil(((window + 1) * WINDOW_MS - now) / 1000))
            raise Refused(
                429,
                f"more than {limit} submissions per minute for this token; retry later",
                {"Retry-After": str(retry_s)},
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
    app.add_middleware(SecurityMiddleware, settings=settings)
