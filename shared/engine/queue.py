"""The reliable FIFO queue: LPUSH in, BLMOVE RIGHT->LEFT into a worker's active list.

A taken id is never only in a client's memory: BLMOVE moves it atomically into
``active:<worker>``, and it leaves that list only when the job's final transition
acks it (LREM in the same Lua call). Producers push on the left, consumers take
from the right, so the oldest id is always taken first.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis


class Queue:
    """One list of pending ids and one worker's active list."""

    def __init__(self, redis: Redis, source: str, active: str) -> None:
        self.redis = redis
        self.source = source
        self.active = active

    async def push(self, *job_ids: str) -> int:
        """Append ids at the tail (they are taken after everything already queued)."""
        return int(await self.redis.lpush(self.source, *job_ids))

    async def take(self, timeout_s: float) -> str | None:
        """Block up to ``timeout_s`` for the oldest id; it moves into the active list."""
        # redis-py types the timeout as int, but the server takes fractional seconds.
        timeout: Any = timeout_s
        job_id = await self.redis.blmove(self.source, self.active, timeout, "RIGHT", "LEFT")
        if job_id is None:
            return None
        return job_id.decode() if isinstance(job_id, bytes) else str(job_id)

    async def ack(self, job_id: str) -> bool:
        """Drop a finished id from the active list (the deployer acks inside a Lua call)."""
        return bool(await self.redis.lrem(self.active, 0, job_id))

    async def length(self) -> int:
        return int(await self.redis.llen(self.source))

    async def pending(self, limit: int = 100) -> list[str]:
        """Up to ``limit`` waiting ids, oldest (next to be taken) first."""
        ids = await self.redis.lrange(self.source, -limit, -1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in reversed(ids)]

    async def in_flight(self) -> list[str]:
        ids = await self.redis.lrange(self.active, 0, -1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
