"""The blocking half of taking a job, and what the queues hold right now.

Ids are pushed (LPUSH) onto a stage's queue by ``submit.lua`` and the transition
that hands a job on; a worker takes the oldest (the right end). While the queue has
work a take is one Lua call (``take.lua`` via :meth:`JobStore.take`); when it is
empty a slot blocks here in BLMOVE, which moves the id into the worker's active list
the moment one is pushed. A taken id is never only in a client's memory: it leaves
the active list only when the job's final transition acks it (LREM in the same Lua
call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.redis.keys import Keys


class Queue:
    """One stage's queue as seen by one worker's active list."""

    def __init__(self, redis: Redis, key: str, active: str) -> None:
        self.redis = redis
        self.key = key
        self.active = active

    async def take(self, timeout_s: float) -> str | None:
        """Block up to ``timeout_s`` for the oldest id; it moves into the active list."""
        # redis-py types the timeout as int, but the server takes fractional seconds.
        timeout: Any = timeout_s
        job_id = await self.redis.blmove(self.key, self.active, timeout, "RIGHT", "LEFT")
        return None if job_id is None else str(job_id)

    async def ack(self, job_id: str) -> bool:
        """Drop an id from the active list (a job that ended before it was taken)."""
        return bool(await self.redis.lrem(self.active, 0, job_id))


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many jobs wait where, and whether the fleet is paused: one read."""

    build: int
    ingest: int
    delayed: int
    dead: int
    paused: bool


async def read_counts(redis: Redis, keys: Keys) -> QueueCounts:
    """Every queue's length in one round trip (the API, /metrics and chat show it)."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.queue)
    pipe.llen(keys.ingest)
    pipe.zcard(keys.delayed)
    pipe.llen(keys.dead)
    pipe.hget(keys.fleet, "paused")
    build, ingest, delayed, dead, paused = await pipe.execute()
    return QueueCounts(int(build), int(ingest), int(delayed), int(dead), paused == "1")


async def pending(redis: Redis, key: str, limit: int = 100) -> list[str]:
    """Up to ``limit`` waiting ids of queue ``key``, the next to be taken first."""
    ids: Any = await redis.lrange(key, -limit, -1)
    return [str(i) for i in reversed(ids)]
