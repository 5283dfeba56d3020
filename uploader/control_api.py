"""Control routes: cancel and retry deployments, pause and cap the fleet."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from shared.engine.fleet import read_fleet, write_fleet
from shared.engine.jobs import TERMINAL, Status
from shared.engine.outcome import outcome_line
from shared.engine.replies import CancelReply
from shared.engine.stages import BUILD, INGEST
from uploader.access import Caller
from uploader.api import Svc, job_or_404
from uploader.auth import Action, require
from uploader.jsonbody import ParsedJSONRoute

router = APIRouter(route_class=ParsedJSONRoute)
log = structlog.get_logger("control")


class FleetUpdate(BaseModel):
    """``PUT /fleet`` body; omitted fields keep their value, ``max_concurrency: null``
    lifts the cap."""

    model_config = ConfigDict(extra="forbid")
    paused: bool | None = None
    max_concurrency: int | None = Field(default=-1, ge=-1, le=100_000)


class FleetView(BaseModel):
    paused: bool
    max_concurrency: int | None


@router.post("/deployments/{job_id}/cancel")
async def cancel_deployment(job_id: str, svc: Svc, who: Caller) -> dict[str, Any]:
    """Cancel a queued job, or stop a running build (its whole process group)."""
    record = await job_or_404(svc, job_id)
    require(who, Action.OPERATE, record.service)
    result = await svc.store.cancel(job_id, "cancelled by request")
    if result.reply is CancelReply.ENDED:
        raise HTTPException(409, f"deployment {job_id} has already ended ({result.status})")
    if result.reply is not CancelReply.CANCELLED:
        raise HTTPException(404, f"no deployment {job_id!r}")
    ended = await svc.store.get_raw(job_id)
    if ended:  # this call ended the job: its one outcome line (a worker's end finds it ended)
        log.info("job.outcome", job_id=job_id, service=record.service, **outcome_line(ended))
    return {"id": job_id, "status": Status.CANCELLED.value, "was": result.status}


@router.post("/deployments/{job_id}/retry", status_code=202)
async def retry_deployment(job_id: str, svc: Svc, who: Caller) -> dict[str, Any]:
    """Run a failed, dead-lettered or cancelled job again (same id, same seq)."""
    record = await job_or_404(svc, job_id)
    require(who, Action.OPERATE, record.service)
    if record.status not in (Status.FAILED, Status.CANCELLED):
        state = "still running" if record.status not in TERMINAL else record.status.value
        raise HTTPException(409, f"only failed or cancelled deployments can be retried ({state})")
    # A job that never got its source archived starts again from the clone.
    stage = BUILD if BUILD.resume_status in record.phases else INGEST
    result = await svc.store.revive(job_id, stage)
    if not result.changed:
        raise HTTPException(409, f"deployment {job_id} cannot be retried ({result.status})")
    return {"id": job_id, "status": stage.resume_status.value}


@router.get("/fleet", response_model=FleetView)
async def get_fleet(svc: Svc) -> FleetView:
    """Whether deployers are paused, and the fleet-wide concurrency cap."""
    state = await read_fleet(svc.redis, svc.keys)
    return FleetView(paused=state.paused, max_concurrency=state.max_concurrency)


@router.put("/fleet", response_model=FleetView)
async def put_fleet(body: FleetUpdate, svc: Svc, who: Caller) -> FleetView:
    """Pause/resume deployers (in-flight work finishes) or cap concurrent builds (admins)."""
    require(who, Action.FLEET)
    if body.max_concurrency == 0:
        raise HTTPException(422, "max_concurrency must be at least 1 (use paused to stop)")
    state = await write_fleet(
        svc.redis, svc.keys, paused=body.paused, max_concurrency=body.max_concurrency
    )
    return FleetView(paused=state.paused, max_concurrency=state.max_concurrency)
