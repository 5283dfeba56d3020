"""What the dashboard shows, read from Redis: a :class:`~uploader.dashview.Dashboard`."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.coord.lockbook import LockBook
from shared.coord.staging import Staging
from shared.core.clock import now_ms
from shared.core.siteaddr import preview_url, site_url
from shared.engine.queue import read_counts
from shared.engine.stages import BUILD, INGEST
from shared.engine.workers import list_workers
from shared.redis.keys import Keys
from uploader.dashview import Dashboard, Recent, Waiting
from uploader.position import positions
from uploader.state import Services

WAITING_SHOWN = 50  # per queue
RECENT_SHOWN = 25


async def waiting_jobs(redis: Redis, keys: Keys) -> list[Waiting]:
    """The first jobs of both queues with their places, service and status."""
    placed = [
        (name, p)
        for name, stage in (("build", BUILD), ("ingest", INGEST))
        for p in await positions(redis, stage.queue(keys), WAITING_SHOWN)
    ]
    if not placed:
        return []
    pipe = redis.pipeline(transaction=False)
    for _, p in placed:
        pipe.hmget(keys.job(p["id"]), "service", "status")
    fields: list[Any] = await pipe.execute()
    return [
        Waiting(p["id"], name, p["position"], service, status)
        for (name, p), (service, status) in zip(placed, fields, strict=True)
    ]


async def read_dashboard(svc: Services) -> Dashboard:
    """Queue, workers, recent deployments, locks and claims as they are now."""
    redis, keys, settings = svc.redis, svc.keys, svc.settings
    counts = await read_counts(redis, keys)
    workers = await list_workers(redis, keys)
    pipe = redis.pipeline(transaction=False)
    for w in workers:
        pipe.lrange(keys.active(w.id), 0, -1)
    active: list[Any] = await pipe.execute()
    events_max = settings.events_max_entries
    locks = await LockBook(redis, keys, events_max=events_max).held_locks()
    claims = await Staging(redis, keys, events_max=events_max).claims()
    recent = await svc.store.recent(limit=RECENT_SHOWN)
    return Dashboard(
        paused=counts.paused,
        counts={
            "build": counts.build,
            "ingest": counts.ingest,
            "delayed": counts.delayed,
            "dead": counts.dead,
        },
        waiting=await waiting_jobs(redis, keys),
        workers=[
            {
                "id": w.id,
                "kind": w.kind,
                # What its active list holds now, as the current-job column shows: the
                # count its heartbeat reports lags by up to a beat.
                "busy": len(ids),
                "slots": w.slots,
                "heartbeat_age_ms": w.heartbeat_age_ms,
            }
            for w, ids in zip(workers, active, strict=True)
        ],
        active={w.id: [str(i) for i in ids] for w, ids in zip(workers, active, strict=True)},
        recent=[
            Recent(r, site_url(settings, r.service), preview_url(settings, r.id)) for r in recent
        ],
        locks=[lock.public() for lock in locks],
        claims=[c.public() for c in claims],
        now_ms=now_ms(),
    )
