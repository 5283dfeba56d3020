"""Recent build durations per service, the history behind queue ETAs
(``uploader/position.py``).

Each uploader follows ``{ns}:events`` through its stream reader (``uploader/loghub.py``)
and, when a job goes live, reads the job's phase timings and adds ``<id>:<build ms>``
to ``{ns}:durations:<service>`` (a zset scored by the end time, capped at
``DURATIONS_KEPT``). Several uploaders record the same job as the same member: the
write is idempotent, so no coordination is needed. Jobs that end while no uploader
runs are not recorded; the ETA then rests on the ones that were.
"""

from __future__ import annotations

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.engine.jobs import JobRecord, JobStore, Status
from shared.redis.keys import Keys
from uploader.events import latest_id
from uploader.loghub import LogHub, StreamEntry
from uploader.position import DURATIONS_KEPT, build_ms

log = structlog.get_logger("durations")
RETRY_S = 1.0


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
    """Record every job that goes live from now on, until cancelled; Redis outages
    are retried, never fatal."""
    after: str | None = None
    while True:
        try:
            if after is None:
                after = await latest_id(store.redis, store.keys.events)
                if started is not None:
                    started.set()
            after = await _follow(hub, store, after, ttl_s)
        except RedisError as exc:
            log.warning("durations.redis_error", error=str(exc))
            await anyio.sleep(RETRY_S)


async def _follow(hub: LogHub, store: JobStore, after: str, ttl_s: int) -> str:
    """Record from ``after`` until the hub drops us; the last entry id seen."""
    subscription = await hub.follow_events(after, internal=True)
    try:
        while True:
            try:
                batch = await subscription.receive()
            except anyio.EndOfStream:
                return after  # dropped as too slow: follow again from here
            for entry in batch:
                job_id = went_live(entry)
                if job_id is not None:
                    await _record(store, job_id, ttl_s)
                after = entry.id
    finally:
        subscription.close()


async def _record(store: JobStore, job_id: str, ttl_s: int) -> None:
    record = await store.get(job_id)
    if record is not None:
        ms = await record_build(store.redis, store.keys, record, ttl_s)
        log.debug("durations.recorded", job_id=job_id, service=record.service, build_ms=ms)
