"""The ASGI middleware in front of routing: what must be decided before a route is
chosen and before a body is read whole.

In order: the ``Host`` header (``uploader/origin.py``); who is calling
(``uploader/access.py``: a token or a login cookie; 401 without either, 403 for a
viewer's write), so
that an anonymous caller learns nothing about paths and makes the server read no
body; the cross-site write check; the body cap (``BUILDQ_MAX_BODY_BYTES``: 413 by
Content-Length, then by a running count for chunked bodies); strict JSON
(``uploader/jsonbody.py``), parsed here once and handed to the route in the scope.
Every refusal is a 4xx with the API's error shape; nothing malformed reaches a route.
Routes read the identity with the ``Caller`` dependency.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.core.settings import Settings
from uploader.access import SAFE_METHODS, SCOPE_KEY, Gatekeeper, is_chatops, is_form
from uploader.jsonbody import is_json, keep_document, parse_json_body
from uploader.origin import OriginPolicy, header
from uploader.refused import Refused, refusal_response


async def read_capped(scope: Scope, receive: Receive, cap: int) -> bytes:
    """The whole body, or Refused (413) as soon as it is known to exceed ``cap``."""
    declared = header(scope, b"content-length")
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


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real stream."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class RequestGuard:
    """See the module docstring."""

    def __init__(
        self, app: ASGIApp, settings: Settings, origins: OriginPolicy, gatekeeper: Gatekeeper
    ) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.origins = origins
        self.gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        try:
            self.origins.check_host_header(scope)
            identity = await self.gatekeeper.identify_request(scope)
            if identity is not None:
                scope[SCOPE_KEY] = identity
            if method not in SAFE_METHODS and not is_chatops(method, path):
                self.origins.check_cross_site(scope, form=is_form(method, path))
            body = None
            if method not in ("GET", "HEAD"):
                body = await read_capped(scope, receive, self.max_body_bytes)
                media = (header(scope, b"content-type") or b"").decode("latin-1")
                if body and is_json(media):
                    keep_document(scope, parse_json_body(body))
        except Refused as exc:
            await refusal_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive if body is None else replay(body, receive), send)
