"""Recent build durations per service, the history behind queue ETAs
(``uploader/position.py``).

Each uploader follows ``{ns}:events`` through its stream reader (``uploader/loghub.py``)
and, when a job goes live, reads the job's phase timings and adds ``<id>:<build ms>``
to ``{ns}:durations:<service>`` (a zset scored by the end time, capped at
``DURATIONS_KEPT``). Several uploaders record the same job as the same member: the
write is idempotent, so no coordination is needed. The uploaders keep their place in
the stream in ``{ns}:durations-cursor``: jobs that go live while no uploader runs are
recorded when one starts again.
"""

from __future__ import annotations

import anyio
import structlog
from redis.asyncio import Redis

from shared.engine.jobs import JobRecord, JobStore, Status
from shared.redis.keys import Keys
from uploader.feed import follow_feed
from uploader.loghub import LogHub, StreamEntry
from uploader.position import DURATIONS_KEPT, build_ms

log = structlog.get_logger("durations")


async def record_build(redis: Redis, keys: Keys, record: JobRecord, ttl_s: int) -> int | None:
    """Add a live job's build duration to its service's history; the ms recorded."""
    ms = build_ms(record)
    if ms is None or record.ended_at is None:
        return None
    key = keys.durations(record.service)
    pipe = redis.pipeline(transaction=True)
    pipe.zadd(key, {f"{record.id}:{ms}": record.ended_at})
    pipe.zremrangebyrank(key, 0, -(DURATIONS_KEPT + 1))
    pipe.expire(key, ttl_s)
    await pipe.execute()
    return ms


def went_live(entry: StreamEntry) -> str | None:
    """The job id of a ``job`` event whose status is ``live``."""
    f = entry.fields
    if f.get("kind") == "job" and f.get("status") == Status.LIVE.value:
        return f.get("id")
    return None


async def record_durations(
    hub: LogHub, store: JobStore, *, ttl_s: int, started: anyio.Event | None = None
) -> None:
    """Record every job that goes live, from where the uploaders left off
    (``uploader/feed.py``), until cancelled."""

    async def handle(entry: StreamEntry) -> None:
        job_id = went_live(entry)
        if job_id is not None:
            await _record(store, job_id, ttl_s)

    await follow_feed(
        hub,
        store.redis,
        name="durations",
        cursor=store.keys.durations_cursor,
        handle=handle,
        started=started,
    )


async def _record(store: JobStore, job_id: str, ttl_s: int) -> None:
    record = await store.get(job_id)
    if record is not None:
        ms = await record_build(store.redis, store.keys, record, ttl_s)
        log.debug("durations.recorded", job_id=job_id, service=record.service, build_ms=ms)
