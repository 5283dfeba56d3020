"""Fleet-wide counters and histograms, kept in Redis so they count every worker on
every host and outlive restarts; ``GET /metrics`` renders what :func:`read_stats`
returns.

Endings and retries are counted by the transition that makes them
(``shared/redis/lua/_stats.lua``): a count is exact, and a retried client call finds
the job already moved and counts nothing. What happens outside a transition (a
deploy lock acquired, a stale worker's jobs requeued) is counted here, in one MULTI
after the event.

Fields of the ``{ns}:stats`` hash:

- ``deployments:<status>``: jobs that ended at that status (a retried job that ends
  again counts again); ``dead_letters``: the failed ones that were given up on;
- ``retries``: runs that ended in a retry with backoff; ``recoveries``: jobs
  requeued because their worker died (its process is gone, or its heartbeat stale);
- per histogram series (``phase:<phase>``, ``phase:total``, ``lock_wait``):
  ``<series>:le:<bound ms>`` and ``<series>:le:inf`` count observations in that
  bucket only (made cumulative when read) and ``<series>:sum_ms``; the count is the
  sum of the buckets (one HINCRBY fewer per observation; a ``<series>:count`` field
  written by older versions is ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shared.engine.records import PHASES, TERMINAL, JobRecord
from shared.redis.keys import Keys

BOUNDS_MS = (
    10,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    120000,
    300000,
    600000,
    1800000,
    3600000,
)
"""Histogram bucket upper bounds; ``_stats.lua`` buckets with the same list."""

PHASE_SERIES = (*(p.value for p in PHASES), "total")
"""The phases every scrape reports, observed or not (others appear once observed)."""

LOCK_WAIT = "lock_wait"


@dataclass(frozen=True, slots=True)
class Histogram:
    """One histogram series as Prometheus wants it."""

    buckets: tuple[tuple[float, int], ...]
    """Cumulative ``(upper bound in seconds, count)``, the last bound ``inf``."""
    sum_s: float
    count: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Everything the stats hash holds, decoded."""

    deployments: dict[str, int]
    dead_letters: int
    retries: int
    recoveries: int
    phases: dict[str, Histogram] = field(default_factory=dict)
    lock_wait: Histogram | None = None


def bucket_field(series: str, ms: int) -> str:
    """The field counting an observation of ``ms`` in ``series`` (as ``_stats.lua``)."""
    for bound in BOUNDS_MS:
        if ms <= bound:
            return f"{series}:le:{bound}"
    return f"{series}:le:inf"


def histogram(raw: Mapping[str, str], series: str) -> Histogram:
    """Series ``series`` of the raw hash, cumulative; zeros if never observed."""
    total = 0
    buckets: list[tuple[float, int]] = []
    for bound in BOUNDS_MS:
        total += int(raw.get(f"{series}:le:{bound}", 0))
        buckets.append((bound / 1000, total))
    total += int(raw.get(f"{series}:le:inf", 0))
    buckets.append((float("inf"), total))
    return Histogram(
        tuple(buckets),
        sum_s=int(raw.get(f"{series}:sum_ms", 0)) / 1000,
        count=total,
    )


def parse_stats(raw: Mapping[str, str]) -> Stats:
    """Decode the stats hash; every terminal status and phase is reported, even at 0."""
    deployments = {s.value: 0 for s in sorted(TERMINAL)}
    phases = set(PHASE_SERIES)
    for name, value in raw.items():
        if name.startswith("deployments:"):
            deployments[name.removeprefix("deployments:")] = int(value)
        elif name.startswith("phase:") and name.endswith(":sum_ms"):
            phases.add(name.removeprefix("phase:").removesuffix(":sum_ms"))
    return Stats(
        deployments=deployments,
        dead_letters=int(raw.get("dead_letters", 0)),
        retries=int(raw.get("retries", 0)),
        recoveries=int(raw.get("recoveries", 0)),
        phases={p: histogram(raw, f"phase:{p}") for p in sorted(phases)},
        lock_wait=histogram(raw, LOCK_WAIT),
    )


async def read_stats(redis: Redis, keys: Keys) -> Stats:
    """The fleet's counters and histograms, in one read."""
    raw: Any = await redis.hgetall(keys.stats)
    return parse_stats({str(k): str(v) for k, v in raw.items()})


async def observe(redis: Redis, keys: Keys, series: str, ms: int) -> None:
    """Add one observation of ``ms`` to histogram ``series``."""
    ms = max(0, ms)
    pipe = redis.pipeline(transaction=True)
    pipe.hincrby(keys.stats, bucket_field(series, ms), 1)
    pipe.hincrby(keys.stats, f"{series}:sum_ms", ms)
    await pipe.execute()


def lock_wait_ms(record: JobRecord, now: int) -> int:
    """How long ``record`` waited for its deploy lock, acquired at ``now``: since it
    first found the lock held (``waiting_since``, kept across rechecks), else since
    this run started building."""
    building = record.phases.get("building")
    since = record.waiting_since or (building.start if building is not None else now)
    return max(0, now - since)


async def count_lock_wait(redis: Redis, keys: Keys, record: JobRecord, now: int) -> None:
    """Observe the wait of a deploy lock just acquired for ``record``."""
    await observe(redis, keys, LOCK_WAIT, lock_wait_ms(record, now))


async def count_recoveries(redis: Redis, keys: Keys, jobs: int) -> None:
    """Count ``jobs`` requeued from workers that died."""
    if jobs > 0:
        await redis.hincrby(keys.stats, "recoveries", jobs)


@dataclass(frozen=True, slots=True)
class Inflight:
    """Jobs waiting and running across both stages: what an autoscaler should scale
    on (a queue's length alone drops as workers take jobs, and scales busy ones away)."""

    waiting: int
    running: int

    @property
    def total(self) -> int:
        return self.waiting + self.running


async def read_inflight(redis: Redis, keys: Keys) -> Inflight:
    """Waiting (both queues and delayed) and running (every worker's active list)."""
    workers: Any = await redis.zrange(keys.workers, 0, -1)
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.ingest)
    pipe.llen(keys.queue)
    pipe.zcard(keys.delayed)
    for worker_id in workers:
        pipe.llen(keys.active(str(worker_id)))
    ingest, build, delayed, *active = await pipe.execute()
    return Inflight(waiting=int(ingest) + int(build) + int(delayed), running=sum(map(int, active)))
