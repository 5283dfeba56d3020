"""Old site paths on the API origin: ``/sites/<service>/…`` and ``/preview/<id>/…``
redirect to the site's own origin (``uploader/sites.py`` serves it)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse

from shared.core.names import NAME_RE
from shared.core.siteaddr import JOB_ID_RE, preview_url, site_url
from uploader.api import Svc

router = APIRouter()


def _redirect(base: str, path: str, request: Request) -> RedirectResponse:
    query = request.url.query
    target = base + quote(path.lstrip("/")) + (f"?{query}" if query else "")
    return RedirectResponse(target, status_code=308)


@router.get("/sites/{service}", include_in_schema=False)
@router.get("/sites/{service}/{path:path}")
async def site(service: str, request: Request, svc: Svc, path: str = "") -> RedirectResponse:
    """The live deployment of ``service`` is served at its own origin: redirect there."""
    if not NAME_RE.fullmatch(service):
        raise HTTPException(404, "no such service")
    return _redirect(site_url(svc.settings, service), path, request)


@router.get("/preview/{job_id}", include_in_schema=False)
@router.get("/preview/{job_id}/{path:path}")
async def preview(job_id: str, request: Request, svc: Svc, path: str = "") -> RedirectResponse:
    """One deployment's files are served at their own origin: redirect there."""
    if not JOB_ID_RE.fullmatch(job_id):
        raise HTTPException(404, "no such deployment")
    return _redirect(preview_url(svc.settings, job_id), path, request)
