"""The sites origin: every request on the sites listener is a file of some site.

The uploader listens twice: the API on ``BUILDQ_PORT`` and sites on
``BUILDQ_SITES_PORT``. :class:`SitesOrigin` sits in front of the API app and sends
every request that arrived on the sites listener to :func:`serve`, so no API route
is ever reachable on a site's origin, and no site on the API's. The ``Host`` header
picks the site (``shared/core/siteaddr.py``); unknown hosts get 404 (this is also the
DNS-rebinding guard for the sites listener).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote

import structlog
from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from shared.core.errors import StorageError
from shared.core.siteaddr import SiteKind, parse_host
from shared.storage.s3 import ObjectNotFound, serve_key, site_prefix
from uploader.state import Services
from uploader.static_files import Request, SiteFiles

log = structlog.get_logger("sites")
SPA_CACHE_MAX = 4096
SITE_METHODS = ("GET", "HEAD")


class ServeOptionsCache:
    """Per-deployment serving options (immutable once published), cached in memory."""

    def __init__(self, maximum: int = SPA_CACHE_MAX) -> None:
        self.maximum = maximum
        self.entries: OrderedDict[str, bool] = OrderedDict()

    async def spa(self, svc: Services, job_id: str) -> bool | None:
        """Whether ``job_id`` is a single-page app; None if it has published nothing
        (not cached: it may publish later)."""
        if job_id in self.entries:
            self.entries.move_to_end(job_id)
            return self.entries[job_id]
        try:
            blob = await svc.storage.read(serve_key(job_id))
        except ObjectNotFound:
            return None
        options = json.loads(blob.body)
        spa = bool(options.get("spa")) if isinstance(options, dict) else False
        self.entries[job_id] = spa
        if len(self.entries) > self.maximum:
            self.entries.popitem(last=False)
        return spa


def _text(status: int, message: str, method: str, **headers: str) -> Response:
    body = "" if method == "HEAD" else message + "\n"
    base = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    return PlainTextResponse(body, status_code=status, headers={**base, **headers})


async def serve(svc: Services, options: ServeOptionsCache, scope: Scope) -> Response:
    """The response to one request on the sites listener."""
    method = scope["method"]
    if method not in SITE_METHODS:
        return _text(405, "sites are read-only", "GET", Allow=", ".join(SITE_METHODS))
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    site = parse_host(svc.settings, headers.get("host", ""))
    if site is None:
        return _text(404, "no site at this address", method)
    if site.kind is SiteKind.LIVE:
        job_id = await svc.redis.hget(svc.keys.site(site.name), "id")
        if not job_id:
            return _text(404, f"{site.name} has no live deployment", method)
    else:
        job_id = site.name
    spa = await options.spa(svc, job_id)  # cached once published: no lookup per request
    if spa is None and site.kind is SiteKind.PREVIEW and not await svc.store.get(job_id):
        return _text(404, "no such deployment", method)
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = unquote(raw_path.decode("latin-1").split("?", 1)[0], errors="strict")
    files = SiteFiles(svc.storage, site_prefix(job_id), spa=bool(spa))
    request = Request(
        method=method,
        path=path,
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
    )
    return await files.respond(request)


class SitesOrigin:
    """ASGI wrapper: requests on the sites listener are sites, the rest the API."""

    def __init__(self, app: FastAPI, sites_port: int) -> None:
        self.app = app
        self.sites_port = sites_port
        self.options = ServeOptionsCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server: Any = scope.get("server")
        if scope["type"] != "http" or not server or server[1] != self.sites_port:
            if scope["type"] == "websocket" and server and server[1] == self.sites_port:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        svc: Services = self.app.state.services
        try:
            response = await serve(svc, self.options, scope)
        except (RedisError, StorageError) as exc:
            log.warning("sites.unavailable", error=str(exc))
            response = _text(503, "storage temporarily unavailable", scope["method"])
        except UnicodeDecodeError:
            response = _text(400, "the path is not valid UTF-8", scope["method"])
        await response(scope, receive, send)
