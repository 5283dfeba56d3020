"""The dashboard's routes, on the API origin and behind the API's roles (any token
may read; the cancel and retry buttons appear for roles that may operate the job's
service and call the API's own ``POST .../cancel`` and ``.../retry``).

- ``GET /``: the panels (``uploader/dashview.py``), kept live by the script from
  ``GET /events``, starting at the events id the page was rendered at;
- ``GET /ui/panels``: the panels alone, which the script swaps in on each event;
- ``GET /ui/deployments/{id}``: one deployment with its live build log (the script
  follows ``GET /deployments/{id}/logs`` as text/event-stream);
  ``.../summary``: its fields and phases alone;
- ``GET /ui/static/{name}``: the script and the stylesheet, from this package.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import HTMLResponse, Response

from shared.core.siteaddr import preview_url, site_url
from shared.engine.jobs import TERMINAL, JobRecord, Status
from uploader.access import Caller
from uploader.api import Svc, job_or_404
from uploader.auth import Action, decide
from uploader.dashstate import read_dashboard
from uploader.dashview import HEADERS, dashboard_page, deployment_page, panels, summary
from uploader.events import latest_id
from uploader.position import place_of
from uploader.state import Services

router = APIRouter(include_in_schema=False)
STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_static: dict[str, bytes] = {}


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers=HEADERS)


@router.get("/")
async def dashboard(svc: Svc) -> HTMLResponse:
    """The dashboard page."""
    # The events id first: anything that changes while the panels are read is
    # replayed to the page, never lost between the render and the stream.
    after = await latest_id(svc.redis, svc.keys.events)
    return _html(dashboard_page(await read_dashboard(svc), after))


@router.get("/ui/panels")
async def dashboard_panels(svc: Svc) -> HTMLResponse:
    """The dashboard's panels, for the page's script."""
    return _html(panels(await read_dashboard(svc)))


async def _summary(svc: Services, record: JobRecord) -> str:
    place = await place_of(svc.redis, svc.keys, record)
    return summary(
        record,
        {"position": place.position, "eta_s": place.eta_s},
        site_url(svc.settings, record.service),
        preview_url(svc.settings, record.id),
    )


@router.get("/ui/deployments/{job_id}")
async def deployment(job_id: str, svc: Svc, who: Caller) -> HTMLResponse:
    """One deployment's page: fields, phases, live build log, cancel / retry."""
    record = await job_or_404(svc, job_id)
    may_operate = decide(who, Action.OPERATE, record.service) is None
    body = deployment_page(
        record,
        await _summary(svc, record),
        may_cancel=may_operate and record.status not in TERMINAL,
        may_retry=may_operate and record.status in (Status.FAILED, Status.CANCELLED),
    )
    return _html(body)


@router.get("/ui/deployments/{job_id}/summary")
async def deployment_summary(job_id: str, svc: Svc) -> HTMLResponse:
    """A deployment's fields and phases, for the page's script."""
    return _html(await _summary(svc, await job_or_404(svc, job_id)))


def _read_static(name: str) -> bytes:
    return resources.files("uploader").joinpath("static", name).read_bytes()


@router.get("/ui/static/{name}")
async def static(name: Annotated[str, Path(max_length=40)]) -> Response:
    """The dashboard's script and stylesheet (read once, kept in memory)."""
    if name not in STATIC_TYPES:
        raise HTTPException(404, f"no static file {name[:40]!r}")
    if name not in _static:
        _static[name] = await anyio.to_thread.run_sync(_read_static, name)
    return Response(
        _static[name],
        media_type=STATIC_TYPES[name],
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )
