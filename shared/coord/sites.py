"""Live aliases: which deployment a service serves, moved only forward by promote.lua."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.coord.replies import PROMOTE, Verdict
from shared.core.clock import Clock, now_ms
from shared.redis.keys import Keys
from shared.redis.scripts import Scripts

__all__ = ["Promotion", "Sites", "Verdict"]


@dataclass(frozen=True, slots=True)
class Promotion:
    """The result of :meth:`Sites.promote`."""

    outcome: Verdict
    live_id: str | None = None
    live_seq: int | None = None
    detail: str = ""


class Sites:
    """Reads and moves live aliases."""

    def __init__(
        self, redis: Redis, keys: Keys, *, events_max: int, clock: Clock = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.events_max = events_max
        self.clock = clock
        self.scripts = Scripts(redis)

    async def promote(
        self, service: str, job_id: str, seq: int, *, fence: int | None = None
    ) -> Promotion:
        """Make ``job_id`` live unless a newer seq is live, ``fence`` is stale, or the
        job has ended; one atomic Lua call."""
        k = self.keys
        result = await self.scripts.promote(
            keys=[k.site(service), k.events, k.job(job_id), k.fence(service)],
            args=[
                job_id,
                seq,
                "" if fence is None else str(fence),
                now_ms(self.clock),
                self.events_max,
                service,
            ],
        )
        verdict = PROMOTE(result[0])
        if verdict is Verdict.PROMOTED:
            return Promotion(verdict, job_id, seq)
        if verdict is Verdict.SUPERSEDED:
            return Promotion(verdict, str(result[1]), int(result[2]))
        if verdict is Verdict.FENCED:
            return Promotion(verdict, detail=f"current fence {result[1] or 'none'}")
        return Promotion(verdict, detail=str(result[1]))

    async def live(self, service: str) -> dict[str, str]:
        """The live alias of ``service`` (id, seq, fence, promoted_at), or {}."""
        raw = await self.redis.hgetall(self.keys.site(service))
        return {str(k): str(v) for k, v in raw.items()}
