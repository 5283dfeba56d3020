"""Moves due jobs from ``{ns}:delayed`` back to the queue of their stage."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.core.clock import now_ms
from shared.engine.jobs import JobStore
from shared.engine.stages import Stage
from shared.redis.keys import Keys

BATCH = 100


async def release_due(redis: Redis, keys: Keys, store: JobStore) -> tuple[int, int | None]:
    """Requeue every due job (each move is atomic and happens once however many
    schedulers race); returns (moved, next due time in ms or None)."""
    now = now_ms(store.clock)
    due: Any = await redis.zrangebyscore(keys.delayed, "-inf", now, start=0, num=BATCH)
    moved = 0
    for job_id in due:
        stored: Any = await redis.hget(keys.job(job_id), "retry_stage")
        stage = Stage.named(stored)
        result = await store.transition(
            job_id, stage.resume_status, from_delayed=True, push=stage.queue(keys)
        )
        moved += result.changed
    head: Any = await redis.zrange(keys.delayed, 0, 0, withscores=True)
    return moved, int(head[0][1]) if head else None
