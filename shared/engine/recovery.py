"""Putting jobs back where they can run again: after a shutdown, after a lost reply,
and after a worker died: at once when it ran on this host and its process is gone,
else once its heartbeat went stale."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis

from shared.core.clock import now_ms
from shared.core.host import Host, process_ended, this_host
from shared.engine.jobs import JobStore
from shared.engine.stages import Stage
from shared.engine.stats import count_recoveries
from shared.redis.keys import Keys

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
    await count_recoveries(redis, keys, len(recovered))
    return recovered


# -- same-host recovery ------------------------------------------------------------

PROCESS_FIELDS = ("boot_id", "pid_ns", "host_id", "pid", "pid_start", "queue")

EndedHook = Callable[[str, int], Awaitable[object]]
"""Called with (worker id, pid) of a worker whose process has certainly ended, once its
jobs are requeued: to free what it held beyond the queue (its deploy locks)."""


class Reach(Enum):
    """What this host can know about a registered worker's process."""

    UNKNOWN = "unknown"
    """Another host, another pid namespace, or a worker that did not say: only its
    heartbeat going stale tells that it died."""
    PROBE = "probe"
    """This kernel boot and pid namespace: it has ended if its pid is gone."""
    REBOOTED = "rebooted"
    """This host before its kernel rebooted: it has ended."""


@dataclass(frozen=True, slots=True)
class Registered:
    """A worker's process as the registry describes it."""

    worker_id: str
    beat_ms: int
    boot_id: str
    pid_ns: str
    host_id: str
    pid: int
    pid_start: int
    queue: str | None

    @classmethod
    def parse(cls, worker_id: str, beat_ms: float, values: list[str | None]) -> Registered:
        """From the registry's ``PROCESS_FIELDS`` (absent ones: unknown)."""
        boot_id, pid_ns, host_id, pid, pid_start, queue = values

        def number(value: str | None) -> int:
            return int(value) if value and value.isdigit() else 0

        return cls(
            worker_id,
            int(beat_ms),
            boot_id or "",
            pid_ns or "",
            host_id or "",
            number(pid),
            number(pid_start),
            queue,
        )


def reach(worker: Registered, here: Host) -> Reach:
    """Whether ``here`` can tell by itself that ``worker``'s process has ended.

    A boot id is random per boot, so an equal one means this very kernel; pids name
    the same processes only within one pid namespace (a container has its own). A
    worker of this host id under an older boot is dead if its last heartbeat came
    before this boot: a clone of this machine (same machine id) that is alive
    elsewhere keeps beating.
    """
    if not here.boot_id or not worker.boot_id:
        return Reach.UNKNOWN
    if worker.boot_id == here.boot_id:
        return Reach.PROBE if worker.pid_ns and worker.pid_ns == here.pid_ns else Reach.UNKNOWN
    if worker.host_id == here.host_id and 0 < worker.beat_ms < here.booted_at_ms:
        return Reach.REBOOTED
    return Reach.UNKNOWN


async def recover_same_host_workers(
    redis: Redis,
    store: JobStore,
    *,
    late_ms: int | None = None,
    here: Host | None = None,
    on_ended: EndedHook | None = None,
) -> list[tuple[str, str]]:
    """Requeue at once the jobs of every worker of this host whose process has ended
    (its pid is gone or reused, or the host rebooted since) and forget those workers.

    ``late_ms`` looks only at workers whose heartbeat is at least that old (a live
    worker beats every interval, so a periodic check costs one ZRANGEBYSCORE); None
    looks at all of them (at start: one killed a moment ago still looks fresh).
    Needs no lock: it acts on facts, not on timing, and each requeue is strict, so
    two recoverers at once move (and log) each job once.

    Returns (worker id, job id) pairs that were requeued.
    """
    keys = store.keys
    if here is None:
        here = await anyio.to_thread.run_sync(this_host)
    if not here.boot_id:
        return []
    cutoff: int | str = "+inf" if late_ms is None else now_ms(store.clock) - late_ms
    beats: Any = await redis.zrangebyscore(keys.workers, "-inf", cutoff, withscores=True)
    if not beats:
        return []
    pipe = redis.pipeline(transaction=False)
    for worker_id, _ in beats:
        pipe.hmget(keys.worker(worker_id), PROCESS_FIELDS)
    found = [
        Registered.parse(worker_id, beat, values)
        for (worker_id, beat), values in zip(beats, await pipe.execute(), strict=True)
    ]
    probe = [w for w in found if reach(w, here) is Reach.PROBE]
    ended = await anyio.to_thread.run_sync(
        lambda: [w for w in probe if process_ended(w.pid, w.pid_start)]
    )
    rebooted = [w for w in found if reach(w, here) is Reach.REBOOTED]
    recovered: list[tuple[str, str]] = []
    for worker, where in [(w, "on this host") for w in ended] + [
        (w, "on this host before it rebooted") for w in rebooted
    ]:
        reason = f"worker {worker.worker_id} (pid {worker.pid} {where}) is gone"
        active = keys.active(worker.worker_id)
        stage = Stage.of_queue(keys, worker.queue)
        for job_id in await requeue_all(store, active=active, stage=stage, reason=reason):
            recovered.append((worker.worker_id, job_id))
            log.warning("recovery.requeued", worker=worker.worker_id, job_id=job_id, reason=reason)
        if on_ended is not None:
            await on_ended(worker.worker_id, worker.pid)
        await _forget_ended(redis, keys, worker.worker_id)
    await count_recoveries(redis, keys, len(recovered))
    return recovered


async def _forget_ended(redis: Redis, keys: Keys, worker_id: str) -> None:
    """Unregister a worker whose process has ended, once its active list is empty
    (anything left there waits for the stale recovery)."""
    active = keys.active(worker_id)
    if await redis.llen(active):
        return
    pipe = redis.pipeline(transaction=True)
    pipe.zrem(keys.workers, worker_id)
    pipe.delete(keys.worker(worker_id), active)
    removed, _ = await pipe.execute()
    if removed:
        log.warning("recovery.worker_removed", worker=worker_id, why="process ended")


async def recover_dead_workers(
    redis: Redis,
    store: JobStore,
    *,
    first: bool,
    judge_stale: bool,
    interval_s: float,
    stale_s: float,
    on_ended: EndedHook | None = None,
) -> list[tuple[str, str]]:
    """One housekeeping round: this host's workers whose process has ended (all of them
    on a worker's ``first`` round, else those a heartbeat late), then, ``judge_stale``,
    workers of any host whose heartbeat went stale."""
    recovered = await recover_same_host_workers(
        redis, store, late_ms=None if first else int(interval_s * 1000), on_ended=on_ended
    )
    if judge_stale:
        recovered += await recover_stale_workers(
            redis, store, stale_s=stale_s, lock_ttl_ms=int(interval_s * 1000)
        )
    return recovered
