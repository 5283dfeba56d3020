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
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import structlog
from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from shared.core.errors import StorageError
from shared.core.siteaddr import SiteKind, parse_host
from shared.storage.manifest import Loaded, ManifestCache, ManifestError
from shared.storage.s3 import ObjectNotFound, Storage, serve_key, site_prefix
from uploader.state import Services
from uploader.static_files import FileSource, ManifestFiles, PrefixFiles, Request, SiteFiles

log = structlog.get_logger("sites")
SPA_CACHE_MAX = 4096
SITE_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Deployment:
    """How one published deployment is served."""

    spa: bool
    loaded: Loaded | None  # None: published before manifests, files under sites/<id>/


class Deployments:
    """What each deployment serves, from its manifest (or, for deployments published
    before manifests, its ``serve/<id>.json``); immutable once published, so cached
    in memory: manifests in a :class:`ManifestCache` bounded by file entries, legacy
    options in a small LRU."""

    def __init__(self, storage: Storage, maximum: int = SPA_CACHE_MAX) -> None:
        self.storage = storage
        self.manifests = ManifestCache(storage)
        self.maximum = maximum
        self.legacy: OrderedDict[str, bool] = OrderedDict()

    async def get(self, job_id: str) -> Deployment | None:
        """How ``job_id`` is served; None if it has published nothing (not cached: it
        may publish later). ManifestError if its manifest is unreadable."""
        if job_id in self.legacy:
            self.legacy.move_to_end(job_id)
            return Deployment(self.legacy[job_id], None)
        loaded = await self.manifests.get(job_id)
        if loaded is not None:
            return Deployment(loaded.manifest.spa, loaded)
        try:
            blob = await self.storage.read(serve_key(job_id))
        except ObjectNotFound:
            return None
        options = json.loads(blob.body)
        spa = bool(options.get("spa")) if isinstance(options, dict) else False
        self.legacy[job_id] = spa
        if len(self.legacy) > self.maximum:
            self.legacy.popitem(last=False)
        return Deployment(spa, None)


def _text(status: int, message: str, method: str, **headers: str) -> Response:
    body = "" if method == "HEAD" else message + "\n"
    base = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    return PlainTextResponse(body, status_code=status, headers={**base, **headers})


async def serve(svc: Services, deployments: Deployments, scope: Scope) -> Response:
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
    try:  # cached once published: no lookup per request
        deployment = await deployments.get(job_id)
    except ManifestError as exc:
        log.warning("sites.bad_manifest", job_id=job_id, error=str(exc))
        return _text(502, "this deployment's manifest is invalid", method)
    if deployment is None and site.kind is SiteKind.PREVIEW and not await svc.store.get(job_id):
        return _text(404, "no such deployment", method)
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = unquote(raw_path.decode("latin-1").split("?", 1)[0], errors="strict")
    source: FileSource
    if deployment is not None and deployment.loaded is not None:
        source = ManifestFiles(svc.storage, deployment.loaded)
    else:  # published before manifests (or nothing yet): the objects under sites/<id>/
        source = PrefixFiles(svc.storage, site_prefix(job_id))
    files = SiteFiles(source, spa=deployment is not None and deployment.spa)
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
        self.deployments: Deployments | None = None  # built on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server: Any = scope.get("server")
        if scope["type"] != "http" or not server or server[1] != self.sites_port:
            if scope["type"] == "websocket" and server and server[1] == self.sites_port:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        svc: Services = self.app.state.services
        if self.deployments is None:
            self.deployments = Deployments(svc.storage)
        try:
            response = await serve(svc, self.deployments, scope)
        except (RedisError, StorageError) as exc:
            log.warning("sites.unavailable", error=str(exc))
            response = _text(503, "storage temporarily unavailable", scope["method"])
        except UnicodeDecodeError:
            response = _text(400, "the path is not valid UTF-8", scope["method"])
        await response(scope, receive, send)
