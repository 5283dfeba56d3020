"""Live aliases: which deployment a service serves, moved forward by promote.lua and
back, as a new promotion, by rollback.lua; each move is kept in the service's
promotion history and announced on the events stream."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.coord.replies import PROMOTE, ROLLBACK, RolledBack, Verdict
from shared.core.clock import Clock, now_ms
from shared.redis.keys import Keys
from shared.redis.scripts import Scripts, source

__all__ = ["PROMOTIONS_MAX", "Promotion", "Rollback", "RolledBack", "Sites", "Verdict"]

PROMOTIONS_MAX = 100  # entries of a service's promotion history kept in Redis


@dataclass(frozen=True, slots=True)
class Promotion:
    """The result of :meth:`Sites.promote`."""

    outcome: Verdict
    live_id: str | None = None
    live_seq: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Rollback:
    """The result of :meth:`Sites.rollback`: the new seq and fence when rolled back,
    the live id when it had moved."""

    outcome: RolledBack
    seq: int | None = None
    fence: int | None = None
    live_id: str | None = None


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
        self._rollback: AsyncScript = redis.register_script(source("rollback"))

    async def promote(
        self, service: str, job_id: str, seq: int, *, fence: int | None = None
    ) -> Promotion:
        """Make ``job_id`` live unless a newer seq is live, ``fence`` is stale, or the
        job has ended; one atomic Lua call."""
        k = self.keys
        result = await self.scripts.promote(
            keys=[
                k.site(service),
                k.events,
                k.job(job_id),
                k.fence(service),
                k.promotions(service),
            ],
            args=[
                job_id,
                seq,
                "" if fence is None else str(fence),
                now_ms(self.clock),
                self.events_max,
                service,
                PROMOTIONS_MAX,
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

    async def rollback(
        self, service: str, job_id: str, *, expected_live: str | None, by: str
    ) -> Rollback:
        """Make the earlier deployment ``job_id`` live again under a new seq and fence,
        in one Lua call; refused (nothing changes) if it is already live or, when
        ``expected_live`` is given, if the live deployment is no longer that one.
        The caller checks that ``job_id`` is ``service``'s and still published."""
        k = self.keys
        result = await self._rollback(
            keys=[
                k.site(service),
                k.events,
                k.seq(service),
                k.fence(service),
                k.promotions(service),
            ],
            args=[
                job_id,
                expected_live or "",
                now_ms(self.clock),
                self.events_max,
                service,
                by,
                PROMOTIONS_MAX,
            ],
        )
        outcome = ROLLBACK(result[0])
        if outcome is RolledBack.ROLLED_BACK:
            return Rollback(outcome, seq=int(result[1]), fence=int(result[2]))
        if outcome is RolledBack.MOVED:
            return Rollback(outcome, live_id=str(result[1]))
        return Rollback(outcome, live_id=job_id)

    async def live(self, service: str) -> dict[str, str]:
        """The live alias of ``service`` (id, seq, fence, promoted_at; after a rollback
        also rollback, from and by), or {}."""
        raw = await self.redis.hgetall(self.keys.site(service))
        return {str(k): str(v) for k, v in raw.items()}

    async def promotions(self, service: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """What went live for ``service``, newest first: ``{id, seq, at, rollback}``,
        and ``from`` and ``by`` for a rollback."""
        raw = await self.redis.lrange(self.keys.promotions(service), 0, max(limit, 1) - 1)
        entries = [json.loads(item) for item in raw]
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
