"""``buildq doctor``: check that every job sits in exactly one place, and repair;
say which resource limits builds on this host get.

The invariant (DESIGN, "No job is lost"): every job that has not ended is in
exactly one of ingest, queue, an active list of a live or stale worker, delayed or
dead; an ended job is in none of them (dead-lettered failures stay in dead).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.core import cgroups
from shared.core.clock import now_ms
from shared.core.settings import Settings
from shared.engine.jobs import JobStore, Status
from shared.engine.recovery import requeue
from shared.engine.stages import Stage
from shared.redis.keys import Keys

# Where a job may wait, by preference when it is found in several places.
PLACE_ORDER = ("active", "queue", "ingest", "delayed", "dead")


@dataclass
class Finding:
    """One broken invariant, and whether ``--fix`` repaired it."""

    job_id: str
    problem: str
    detail: str
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class Place:
    """A list or zset an id was found in."""

    kind: str  # one of PLACE_ORDER
    key: str
    worker: str | None = None
    stale: bool = False


class Doctor:
    """Finds (and optionally repairs) jobs that are lost, duplicated or left behind."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings, clock: Any = time.time):
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.store = JobStore(redis, keys, settings, clock)
        self.clock = clock

    async def _places(self) -> dict[str, list[Place]]:
        k = self.keys
        found: dict[str, list[Place]] = defaultdict(list)
        lists = [("ingest", k.ingest), ("queue", k.queue), ("dead", k.dead)]
        for kind, key in lists:
            ids: Any = await self.redis.lrange(key, 0, -1)
            for job_id in ids:
                found[job_id].append(Place(kind, key))
        delayed: Any = await self.redis.zrange(k.delayed, 0, -1)
        for job_id in delayed:
            found[job_id].append(Place("delayed", k.delayed))
        cutoff = now_ms(self.clock) - int(self.settings.worker_stale_s * 1000)
        scored: Any = await self.redis.zrange(k.workers, 0, -1, withscores=True)
        beats: dict[str, float] = dict(scored)
        active_keys = {k.active(w): w for w in beats}
        async for key in self.redis.scan_iter(match=k.active("*"), count=500):
            active_keys.setdefault(str(key), str(key)[len(k.active("")) :])
        for key, worker in active_keys.items():
            stale = worker not in beats or beats[worker] <= cutoff
            held: Any = await self.redis.lrange(key, 0, -1)
            for job_id in held:
                found[job_id].append(Place("active", key, worker, stale))
        return found

    async def check(self, *, fix: bool = False) -> list[Finding]:
        """Every finding; with ``fix``, each is repaired as recovery would."""
        places = await self._places()
        indexed: Any = await self.redis.zrange(self.keys.jobs, 0, -1)
        findings: list[Finding] = []
        for job_id in dict.fromkeys([*indexed, *places]):
            raw: Any = await self.redis.hmget(self.keys.job(job_id), "status", "ended_at")
            finding = await self._check_one(job_id, raw, places.get(job_id, []), fix)
            if finding is not None:
                findings.append(finding)
        return findings

    async def _check_one(
        self, job_id: str, raw: list[str | None], where: list[Place], fix: bool
    ) -> Finding | None:
        status, ended = raw
        if status is None or ended:
            extra = [p for p in where if not (p.kind == "dead" and status == Status.FAILED)]
            if not extra:
                return None
            state = "expired" if status is None else f"ended ({status})"
            finding = Finding(job_id, "left behind", f"{state} but still in {_names(extra)}")
            if fix:
                await self._remove(job_id, extra)
                finding.fixed = True
            return finding
        if not where:
            finding = Finding(job_id, "lost", f"status {status} but in no queue")
            if fix:
                await self._restore(job_id, Status(status))
                finding.fixed = True
            return finding
        if len(where) > 1:
            keep = min(where, key=lambda p: PLACE_ORDER.index(p.kind))
            extra = [p for p in where if p is not keep] if where.count(keep) == 1 else where[1:]
            finding = Finding(job_id, "duplicated", f"in {_names(where)}")
            if fix:
                await self._remove(job_id, extra, once=True)
                finding.fixed = True
            return finding
        place = where[0]
        if place.kind == "active" and place.stale:
            finding = Finding(job_id, "orphaned", f"held by stale worker {place.worker}")
            if fix:
                finding.fixed = await requeue(
                    self.store,
                    job_id,
                    active=place.key,
                    stage=Stage.of_status(Status(status)),
                    reason=f"buildq doctor: worker {place.worker} is gone",
                )
            return finding
        return None

    async def _remove(self, job_id: str, places: list[Place], *, once: bool = False) -> None:
        for place in places:
            if place.kind == "delayed":
                await self.redis.zrem(place.key, job_id)
            else:
                await self.redis.lrem(place.key, 1 if once else 0, job_id)

    async def _restore(self, job_id: str, status: Status) -> None:
        if status in (Status.RETRYING, Status.WAITING):
            await self.store.transition(job_id, status, delay_until_ms=now_ms(self.clock))
            return
        # Its status says where it belongs: a job queued or running for its build goes
        # back to the build queue even if an earlier ingest retry left retry_stage set.
        where = Stage.of_status(status)
        await self.store.transition(
            job_id, where.resume_status, push=where.queue(self.keys), head=True
        )


def build_limits(settings: Settings) -> str:
    """``build limits: cgroup v1 (memory 4096 MiB, …)``: what builds on this host get."""
    return f"build limits: {cgroups.report(settings)}"


def _names(places: list[Place]) -> str:
    return ", ".join(p.kind + (f" of {p.worker}" if p.worker else "") for p in places)
