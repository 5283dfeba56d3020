"""Serving published sites from S3: ``/sites/<service>/...`` and ``/preview/<id>/...``."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

from shared.archive import check_name
from shared.errors import ValidationError
from shared.names import NAME_RE
from shared.storage import ObjectNotFound, site_prefix
from uploader.api import JOB_ID_RE, Svc

router = APIRouter()
SITE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# Sites served from the API's own origin run as an opaque origin: their scripts
# cannot read API responses or reuse the origin's storage. Set BUILDQ_PUBLIC_URL to
# a separate origin to serve sites without it.
SAME_ORIGIN_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


async def _serve(svc: Svc, job_id: str, path: str, base: str) -> Response:
    prefix = site_prefix(job_id)
    if path in ("", "/") or path.endswith("/"):
        rel = path.lstrip("/") + "index.html"
    else:
        rel = path.lstrip("/")
    try:
        check_name(rel)
    except ValidationError:
        raise HTTPException(404, "not found") from None
    try:
        body, mime = await svc.storage.get(prefix + rel)
    except ObjectNotFound:
        if not path.endswith("/") and await svc.storage.exists(f"{prefix}{rel}/index.html"):
            return RedirectResponse(f"{base}/{quote(rel)}/", status_code=308)
        raise HTTPException(404, f"{path or '/'} not found") from None
    headers = dict(SITE_HEADERS)
    if svc.settings.site_base_url == svc.settings.api_url.rstrip("/"):
        headers["Content-Security-Policy"] = SAME_ORIGIN_CSP
    return Response(body, media_type=mime, headers=headers)


@router.get("/sites/{service}", include_in_schema=False)
async def site_root(service: str) -> RedirectResponse:
    return RedirectResponse(f"/sites/{quote(service)}/", status_code=308)


@router.get("/sites/{service}/{path:path}")
async def site(service: str, path: str, svc: Svc) -> Response:
    """The live deployment of ``service``."""
    if not NAME_RE.fullmatch(service):
        raise HTTPException(404, "no such service")
    job_id = await svc.redis.hget(svc.keys.site(service), "id")
    if not job_id:
        raise HTTPException(404, f"service {service!r} has no live deployment")
    return await _serve(svc, job_id, path, f"/sites/{service}")


@router.get("/preview/{job_id}", include_in_schema=False)
async def preview_root(job_id: str) -> RedirectResponse:
    return RedirectResponse(f"/preview/{quote(job_id)}/", status_code=308)


@router.get("/preview/{job_id}/{path:path}")
async def preview(job_id: str, path: str, svc: Svc) -> Response:
    """One deployment's published files, live or not."""
    if not JOB_ID_RE.fullmatch(job_id):
        raise HTTPException(404, "no such deployment")
    return await _serve(svc, job_id, path, f"/preview/{job_id}")
