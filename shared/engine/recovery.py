"""Putting jobs back where they can run again: after a shutdown, after a lost reply,
and after a worker died (its heartbeat went stale)."""

from __future__ import annotations

import os
from typing import Any

import structlog
from redis.asyncio import Redis

from shared.core.clock import now_ms
from shared.engine.jobs import JobStore
from shared.engine.stages import Stage

log = structlog.get_logger("recovery")


async def requeue(
    store: JobStore,
    job_id: str,
    *,
    active: str,
    stage: Stage,
    reason: str,
    strict: bool = True,
    unrun: bool = False,
) -> bool:
    """Move ``job_id`` from ``active`` back to the head of ``stage``'s list and say why
    in its log; with ``strict`` only if it is still in ``active``; ``unrun`` gives back
    the attempt its take counted (it never started running). True if it moved."""
    result = await store.transition(
        job_id,
        stage.resume_status,
        ack=active,
        strict=strict,
        push=stage.queue(store.keys),
        head=True,
        incr={stage.attempts_field: -1} if unrun else None,
    )
    if result.changed:
        await store.redis.xadd(
            store.keys.logs(job_id), {"kind": "line", "text": f"buildq: requeued: {reason}"}
        )
    return result.changed


async def requeue_all(store: JobStore, *, active: str, stage: Stage, reason: str) -> list[str]:
    """Requeue every id in ``active``, keeping their order (oldest claimed runs next)."""
    moved = []
    ids: Any = await store.redis.lrange(active, 0, -1)
    for job_id in ids:  # newest first: each RPUSH puts the next-older one nearer the head
        if await requeue(store, job_id, active=active, stage=stage, reason=reason):
            moved.append(job_id)
    return moved


async def recover_stale_workers(
    redis: Redis, store: JobStore, *, stale_s: float, lock_ttl_ms: int
) -> list[tuple[str, str]]:
    """If no other worker is doing it right now, requeue the jobs of every worker
    whose heartbeat is older than ``stale_s`` and forget those workers.

    Returns (worker id, job id) pairs that were requeued.
    """
    keys = store.keys
    if not await redis.set(keys.recovery_lock, os.urandom(8).hex(), nx=True, px=lock_ttl_ms):
        return []
    cutoff = now_ms(store.clock) - int(stale_s * 1000)
    stale: Any = await redis.zrangebyscore(keys.workers, "-inf", cutoff)
    recovered: list[tuple[str, str]] = []
    for worker_id in stale:
        source: Any = await redis.hget(keys.worker(worker_id), "queue")
        stage = Stage.of_queue(keys, source)
        active = keys.active(worker_id)
        for job_id in await requeue_all(
            store, active=active, stage=stage, reason=f"worker {worker_id} stopped heartbeating"
        ):
            recovered.append((worker_id, job_id))
            log.warning("recovery.requeued", worker=worker_id, job_id=job_id)
        # Forget the worker only if it did not come back meanwhile.
        score = await redis.zscore(keys.workers, worker_id)
        if score is not None and score <= cutoff and await redis.llen(active) == 0:
            pipe = redis.pipeline(transaction=True)
            pipe.zrem(keys.workers, worker_id)
            pipe.delete(keys.worker(worker_id), active)
            await pipe.execute()
            log.warning("recovery.worker_removed", worker=worker_id)
    return recovered
