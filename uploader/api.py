"""Deployment and status routes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from shared.core.buildenv import MAX_ENTRIES, validate_build_env
from shared.core.errors import ValidationError
from shared.core.names import validate_name
from shared.core.siteaddr import JOB_ID_RE, preview_url, site_url
from shared.engine.history import archived_log
from shared.engine.jobs import TERMINAL, JobRecord, Priority, Status
from shared.engine.logs import LogEntry, entry_key, read_log
from shared.engine.queue import pending, read_counts
from shared.engine.workers import list_workers
from uploader.access import Caller
from uploader.auth import Role
from uploader.jsonbody import ParsedJSONRoute
from uploader.loghub import HubFull, Subscription
from uploader.position import place_of, positions
from uploader.refused import Refused
from uploader.state import Services, services
from uploader.submit import Forbidden, KeyExpired, RateLimited, Submission, submit

router = APIRouter(route_class=ParsedJSONRoute)
SSE_KEEPALIVE_S = 5.0

Svc = Annotated[Services, Depends(services)]


class BuildSpec(BaseModel):
    """A build that overrides the repository's own configuration."""

    model_config = ConfigDict(extra="forbid")
    command: str | None = Field(None, min_length=1, max_length=4096)
    output: str | None = Field(None, min_length=1, max_length=255)
    env: dict[str, str] | None = Field(None, max_length=MAX_ENTRIES)

    @field_validator("env")
    @classmethod
    def _safe_env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        """Loader and interpreter variables and oversized environments are a 422."""
        if env is None:
            return None
        try:
            return validate_build_env(env, "build.env")
        except ValidationError as exc:
            raise ValueError(str(exc)) from None


class DeploymentRequest(BaseModel):
    """``POST /deployments`` body."""

    model_config = ConfigDict(extra="forbid")
    repo_url: str | None = Field(None, min_length=1, max_length=2048)  # None: a known service
    ref: str | None = Field(None, max_length=255)
    service: str | None = Field(None, max_length=63)
    root_dir: str | None = Field(None, max_length=255)
    build: BuildSpec | None = None
    # Queue order (shared/redis/lua/_fair.lua); 'high' is for admins: it goes ahead of
    # everyone else's deploys.
    priority: Priority = Priority.NORMAL


class Accepted(BaseModel):
    id: str
    status: Status
    service: str
    seq: int
    links: dict[str, str]


def _links(svc: Services, job_id: str, service: str) -> dict[str, str]:
    base = svc.settings.api_url.rstrip("/")
    return {
        "self": f"{base}/deployments/{job_id}",
        "logs": f"{base}/deployments/{job_id}/logs",
        "site": site_url(svc.settings, service),
        "preview": preview_url(svc.settings, job_id),
    }


@router.post(
    "/deployments",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Accepted, "description": "repeated Idempotency-Key"}},
)
async def create_deployment(
    body: DeploymentRequest,
    svc: Svc,
    who: Caller,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> Any:
    """Accept a repository for deployment; it is cloned and built in the background.

    With an ``Idempotency-Key`` header, repeating the request returns the first job
    (200, same id) instead of creating another; keys are the caller's own.
    """
    build = body.build.model_dump(exclude_none=True) if body.build else None
    if body.priority is Priority.HIGH and who.role is not Role.ADMIN:
        raise HTTPException(403, "priority 'high' goes ahead of everyone's deploys: admins only")
    submission = Submission(
        body.repo_url, body.service, body.ref, body.root_dir, build, body.priority
    )
    try:
        receipt = await submit(svc, who, submission, idempotency_key=idempotency_key)
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from None
    except RateLimited as exc:
        message = f"{exc}; retry later"
        raise Refused(429, message, {"Retry-After": str(exc.retry_after_s)}) from None
    except KeyExpired as exc:
        raise HTTPException(409, str(exc)) from None
    accepted = Accepted(
        id=receipt.job_id,
        status=receipt.status,
        service=receipt.service,
        seq=receipt.seq,
        links=_links(svc, receipt.job_id, receipt.service),
    )
    if receipt.created:
        return accepted
    return JSONResponse(accepted.model_dump(mode="json"), status_code=200)


@router.get("/deployments", response_model=list[JobRecord])
async def list_deployments(
    svc: Svc,
    service: Annotated[str | None, Query(max_length=63)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobRecord]:
    """Recent jobs, newest first."""
    if service is not None:
        validate_name(service)
    return await svc.store.recent(limit=limit, service=service, status=status)


async def job_or_404(svc: Services, job_id: str) -> JobRecord:
    record = await svc.store.get(job_id) if JOB_ID_RE.fullmatch(job_id) else None
    if record is None:
        raise HTTPException(404, f"no deployment {job_id[:40]!r}")
    return record


class Deployment(JobRecord):
    """A job record; a waiting job also has its place in line (1 = next) and, in the
    build queue, the estimated seconds until it is live (``uploader/position.py``)."""

    position: int | None = None
    eta_s: float | None = None


@router.get("/deployments/{job_id}", response_model=Deployment)
async def get_deployment(job_id: str, svc: Svc) -> Deployment:
    """One job record with per-phase timings; ``position`` and ``eta_s`` while queued."""
    record = await job_or_404(svc, job_id)
    place = await place_of(svc.redis, svc.keys, record)
    return Deployment(**record.model_dump(), position=place.position, eta_s=place.eta_s)


@router.get("/deployments/{job_id}/logs", response_model=None)
async def get_logs(
    job_id: str,
    request: Request,
    svc: Svc,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """The build log: text, or ``text/event-stream`` that follows until the job ends.
    Once an ended job's stream (or its whole record) has expired from Redis, the log
    comes from its S3 copy (``shared/engine/history.py``), the same either way."""
    after = (
        last_event_id
        if last_event_id and re.fullmatch(r"[0-9]{1,20}-[0-9]{1,20}", last_event_id)
        else "0"
    )
    record = await svc.store.get(job_id) if JOB_ID_RE.fullmatch(job_id) else None
    archived = None
    if record is None or (record.ended and not await svc.redis.exists(svc.keys.logs(job_id))):
        if JOB_ID_RE.fullmatch(job_id):
            archived = await archived_log(svc.storage, job_id, after=after)
        if archived is None and record is None:
            raise HTTPException(404, f"no deployment {job_id[:40]!r}")
    if "text/event-stream" not in request.headers.get("accept", ""):
        entries = archived if archived is not None else await read_log(svc.redis, svc.keys, job_id)
        return PlainTextResponse("".join(e.render() + "\n" for e in entries))
    if archived is not None:
        return StreamingResponse(
            iter([_sse_event(entry) for entry in archived]),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    hub = svc.logs
    if hub is None:
        raise HTTPException(503, "log streaming is not running in this process")
    try:
        subscription = await hub.follow(job_id, after)
    except HubFull as exc:
        raise HTTPException(503, f"{exc}; retry later", {"Retry-After": "5"}) from None

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in _sse(svc, subscription, job_id, after, request):
                yield event
        finally:
            subscription.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    svc: Services,
    updates: Subscription,
    job_id: str,
    after: str,
    request: Request,
) -> AsyncIterator[str]:
    """Catch up from ``after``, then what the hub hands us, until the job ends."""
    last = entry_key(after)
    catch_up = True
    while not await request.is_disconnected():
        # The stream's history since our cursor, read from Redis only at the start and
        # after an idle tick (the hub's wake-up may have raced our subscription);
        # otherwise entries come from the hub alone.
        batch = await read_log(svc.redis, svc.keys, job_id, after=after) if catch_up else []
        catch_up = False
        if not batch:
            with anyio.move_on_after(SSE_KEEPALIVE_S):
                try:
                    batch = await updates.receive()
                except anyio.EndOfStream:
                    return  # dropped as too slow: the client resumes with Last-Event-ID
        if not batch:
            if await _ended(svc, job_id):
                return
            catch_up = True
            yield ": keep-alive\n\n"
            continue
        for entry in batch:
            if entry_key(entry.id) <= last:
                continue
            last, after = entry_key(entry.id), entry.id
            yield _sse_event(entry)
            if entry.kind == "end":
                return


def _sse_event(entry: LogEntry) -> str:
    data = json.dumps({"kind": entry.kind, "text": entry.text, "status": entry.status})
    return f"id: {entry.id}\nevent: {entry.kind}\ndata: {data}\n\n"


async def _ended(svc: Services, job_id: str) -> bool:
    """Whether a followed job is gone or over (a cursor past its end waits no longer)."""
    status = await svc.redis.hget(svc.keys.job(job_id), "status")
    return status is None or Status(status) in TERMINAL


@router.get("/queue")
async def queue_status(svc: Svc) -> dict[str, Any]:
    """The status endpoint: queue, workers with heartbeat age, active jobs."""
    k = svc.keys
    counts = await read_counts(svc.redis, k)
    workers = await list_workers(svc.redis, k)
    pipe = svc.redis.pipeline(transaction=False)
    for w in workers:
        pipe.lrange(k.active(w.id), 0, -1)
    active = await pipe.execute()
    return {
        "length": counts.build,
        "pending": await pending(svc.redis, k.queue, 100),
        "positions": await positions(svc.redis, k.queue, 100),
        "ingest": counts.ingest,
        "delayed": counts.delayed,
        "dead": counts.dead,
        "paused": counts.paused,
        "active": {w.id: ids for w, ids in zip(workers, active, strict=True)},
        "workers": [
            {
                "id": w.id,
                "kind": w.kind,
                "host": w.host,
                "pid": w.pid,
                "slots": w.slots,
                # What ``active`` lists for it now (its heartbeat's count lags a beat).
                "busy": len(ids),
                "version": w.version,
                "heartbeat_age_ms": w.heartbeat_age_ms,
            }
            for w, ids in zip(workers, active, strict=True)
        ],
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(svc: Svc) -> JSONResponse:
    """Readiness: Redis and S3 both answer."""
    checks: dict[str, str] = {}
    try:
        await svc.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"error: {exc}"
    try:
        await svc.storage.check()
        checks["s3"] = "ok"
    except Exception as exc:
        checks["s3"] = f"error: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
