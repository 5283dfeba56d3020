"""A consumer's periodic checks of its own active list and running jobs, and the
loop that releases due retries; each one a function on plain data."""

from __future__ import annotations

from collections.abc import Collection, Set
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.core.clock import now_ms
from shared.engine.jobs import JobStore
from shared.engine.recovery import requeue
from shared.engine.scheduler import release_due
from shared.engine.stages import Stage


async def ended_among(store: JobStore, running: Collection[str]) -> list[str]:
    """The jobs of ``running`` that have ended (cancelled): one round trip."""
    if not running:
        return []
    ids = list(running)
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(store.keys.job(job_id), "ended_at")
    return [i for i, ended in zip(ids, await pipe.execute(), strict=True) if ended]


async def requeue_orphans(
    store: JobStore,
    *,
    active: str,
    stage: Stage,
    held: Set[str],
    suspects: Set[str],
    log: Any,
) -> set[str]:
    """Requeue ids of ``active`` that no slot holds (a lost reply, a failed final
    write) once seen on two checks in a row: ``suspects`` are the last check's, and
    the ids to pass next time are returned. An id still waiting to be started (its
    BLMOVE's ``take.lua`` never ran) is left to the next take, which starts it:
    requeueing it could race that start."""
    ids: Any = await store.redis.lrange(active, 0, -1)
    now = {i for i in ids if i not in held}
    for job_id in now & suspects:
        status: Any = await store.redis.hget(store.keys.job(job_id), "status")
        if job_id in held or status == stage.resume_status.value:
            continue
        if await requeue(
            store, job_id, active=active, stage=stage, reason="taken but not running in its worker"
        ):
            log.warning("consumer.orphan_requeued", job_id=job_id)
    return now


async def release_due_forever(redis: Redis, store: JobStore, log: Any) -> None:
    """Move due retries back to their queue; sleeps until the next is due (≤ 1 s)."""
    while True:
        wait_s = 1.0
        try:
            _, next_due = await release_due(redis, store.keys, store)
            if next_due is not None:
                wait_s = min(1.0, max(0.01, (next_due - now_ms(store.clock)) / 1000))
        except RedisError as exc:
            log.warning("consumer.scheduler_failed", error=str(exc))
        await anyio.sleep(wait_s)
