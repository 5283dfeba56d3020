"""A waiting job's place in line and its estimated time to live.

Position: a stage's queue is a list that producers LPUSH and workers take from the
right, so the next job is the last element. ``LPOS id RANK -1 MAXLEN n`` scans from
that end and stops at the job, so finding the job at position ``p`` costs ``p``
steps, never the whole list. LLEN and the scan run in one MULTI round trip (one
consistent snapshot); only in a queue longer than ``SCAN_MAX`` does a job the scan did
not reach cost a second one, a bounded scan from the back. Measured with
``python -m tests.bench.bench_position``.

ETA: ``{ns}:durations:<service>`` keeps the service's recent build durations
(``building`` start to ``publishing`` end; written by ``uploader/durations.py``
when a job goes live). A job at position ``p`` with ``s`` build slots in the fleet
starts in wave ``ceil(p / s)``; each wave takes the service's median build time.
No history, no deployer, or a paused fleet: no estimate (``None``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.engine.fleet import read_fleet
from shared.engine.jobs import JobRecord, Status
from shared.engine.stages import BUILD, INGEST
from shared.engine.workers import list_workers
from shared.redis.keys import Keys

SCAN_MAX = 10_000  # LPOS MAXLEN: elements compared per scan, from each end
DURATIONS_KEPT = 20  # recent builds per service behind the ETA


@dataclass(frozen=True, slots=True)
class Place:
    """Where a waiting job stands: 1 = taken next; ``eta_s`` until it is expected live."""

    position: int | None
    eta_s: float | None


def position_from(length: int, from_tail: int | None, from_head: int | None) -> int | None:
    """1-based place in line from LLEN and LPOS indexes (counted from the head, the
    last to be taken); None when neither bounded scan found the id."""
    index = from_tail if from_tail is not None else from_head
    if index is None or index >= length:
        return None
    return length - index


async def queue_position(redis: Redis, queue: str, job_id: str) -> int | None:
    """``job_id``'s place in ``queue`` (1 = next), or None when it is not in it."""
    pipe = redis.pipeline(transaction=True)
    pipe.llen(queue)
    pipe.lpos(queue, job_id, rank=-1, maxlen=SCAN_MAX)
    length, from_tail = await pipe.execute()
    if from_tail is not None or int(length) <= SCAN_MAX:
        return position_from(int(length), from_tail, None)
    pipe = redis.pipeline(transaction=True)  # the back of a long queue: a second look
    pipe.llen(queue)
    pipe.lpos(queue, job_id, rank=1, maxlen=SCAN_MAX)
    length, from_head = await pipe.execute()
    return position_from(int(length), None, from_head)


def estimate_eta_s(position: int, durations_ms: Sequence[int], slots: int) -> float | None:
    """Seconds until a job at ``position`` is expected to be live, or None."""
    if not durations_ms or slots < 1 or position < 1:
        return None
    waves = math.ceil(position / slots)
    return round(waves * statistics.median(durations_ms) / 1000, 1)


def build_ms(record: JobRecord) -> int | None:
    """How long a live job took from taking to publishing (its last attempt)."""
    building = record.phases.get(Status.BUILDING.value)
    publishing = record.phases.get(Status.PUBLISHING.value)
    if building is None or publishing is None or publishing.end is None:
        return None
    return max(0, publishing.end - building.start)


async def recent_durations_ms(redis: Redis, keys: Keys, service: str) -> list[int]:
    """The service's recent build durations, newest last."""
    members: Any = await redis.zrange(keys.durations(service), 0, -1)
    out = []
    for member in members:
        _, _, ms = str(member).rpartition(":")
        if ms.isdigit():
            out.append(int(ms))
    return out


async def fleet_slots(redis: Redis, keys: Keys) -> int:
    """Builds the fleet runs at once: deployer slots, under ``max_concurrency``; 0 when
    paused or no deployer is registered."""
    fleet = await read_fleet(redis, keys)
    if fleet.paused:
        return 0
    slots = sum(w.slots for w in await list_workers(redis, keys) if w.kind == BUILD.name)
    if fleet.max_concurrency is not None:
        slots = min(slots, fleet.max_concurrency)
    return slots


async def place_of(redis: Redis, keys: Keys, record: JobRecord) -> Place:
    """Position and ETA of a waiting job; both None for any other job."""
    if record.status is Status.QUEUED:
        position = await queue_position(redis, BUILD.queue(keys), record.id)
        if position is None:
            return Place(None, None)
        durations = await recent_durations_ms(redis, keys, record.service)
        eta = estimate_eta_s(position, durations, await fleet_slots(redis, keys))
        return Place(position, eta)
    if record.status is Status.ACCEPTED:
        return Place(await queue_position(redis, INGEST.queue(keys), record.id), None)
    return Place(None, None)


async def positions(redis: Redis, queue: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` waiting ids of ``queue`` with their places, next first."""
    ids: Any = await redis.lrange(queue, -limit, -1)
    return [{"id": str(i), "position": n} for n, i in enumerate(reversed(ids), start=1)]
