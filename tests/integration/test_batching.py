"""A consumer's slots sharing writes (shared/engine/batching.py) on a real
valkey-server: the jobs still start in queue order, each exactly once, none is left
in the active list, and a server that lost its scripts mid-drain changes nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from shared.core.settings import Settings
from shared.engine.consumer import Consumer, Handler
from shared.engine.jobs import JobRecord, JobStore, Status, new_job_id
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome
from shared.engine.stages import BUILD
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from tests.unit.test_batching import counting_writes

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

JOBS = 300
SLOTS = 8


def slots_consumer(redis: Redis, settings: Settings, worker: str, handler: Handler) -> Consumer:
    """A consumer of the build stage with SLOTS slots, each on its own connection."""
    return Consumer(
        redis,
        Keys(settings.namespace),
        settings,
        stage=BUILD,
        worker_id=worker,
        slots=SLOTS,
        handler=handler,
        blocking_redis=lambda: make_redis(settings, blocking=True),
    )


@pytest.mark.parametrize("flush_scripts_at", [None, JOBS // 3])
async def test_slots_sharing_writes_start_every_job_once_in_queue_order(
    bq_settings: Settings, monkeypatch: pytest.MonkeyPatch, flush_scripts_at: int | None
) -> None:
    sizes = counting_writes(monkeypatch)
    keys = Keys(bq_settings.namespace)
    redis = make_redis(bq_settings)
    store = JobStore(redis, keys, bq_settings)
    ids = [new_job_id() for _ in range(JOBS)]
    for n, job_id in enumerate(ids):
        # A service each and one submitter: the queue's order is plain FIFO.
        await store.submit(job_id, service=f"batch-{n:03d}", repo_url="https://h/o/r")
        await store.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue)
    stopping = anyio.Event()
    ran: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        ran.append(record.id)
        if len(ran) == flush_scripts_at:
            await redis.script_flush()  # as after a restart: the next calls get NOSCRIPT
        if len(ran) == JOBS:
            stopping.set()
        return Outcome(Status.LIVE)

    consumer = slots_consumer(redis, bq_settings, "deployer-batching-1", handler)
    try:
        with anyio.fail_after(100):
            await consumer.run(stopping)
        events: Any = await redis.xrange(keys.events, "-", "+")
        started = [e["id"] for _, e in events if e.get("status") == "building"]
        statuses = Counter([await redis.hget(keys.job(i), "status") for i in ids])
        active = await redis.llen(keys.active("deployer-batching-1"))
    finally:
        await redis.aclose()

    # The slots' first takes go through BLMOVE, each starting the oldest waiting id of
    # the active list (take.lua, mode 'a'); every later take ends a job and takes the
    # next through a batch: all in queue order.
    assert started == ids
    assert sorted(ran) == sorted(ids)
    assert statuses == {"live": JOBS}
    assert active == 0
    assert max(sizes) > 1  # the slots' calls did share writes


async def test_blocked_slots_woken_at_once_start_their_jobs_in_queue_order(
    bq_settings: Settings,
) -> None:
    keys = Keys(bq_settings.namespace)
    redis = make_redis(bq_settings)
    store = JobStore(redis, keys, bq_settings)
    worker = "deployer-woken-1"
    ids = [new_job_id() for _ in range(SLOTS)]
    for n, job_id in enumerate(ids):
        await store.submit(job_id, service=f"woken-{n}", repo_url="https://h/o/r")
        await store.transition(job_id, Status.QUEUED, ack=keys.ingest)  # not pushed yet
    stopping = anyio.Event()
    ran: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        ran.append(record.id)
        if len(ran) == SLOTS:
            stopping.set()
        return Outcome(Status.LIVE)

    consumer = slots_consumer(redis, bq_settings, worker, handler)

    async def push_when_all_block() -> None:
        with anyio.fail_after(30):
            while True:
                clients: Any = await redis.client_list()
                if sum(c.get("cmd") == "blmove" for c in clients) >= SLOTS:
                    break
                await anyio.sleep(0.02)
        # One command wakes every blocked slot at once; the oldest is at the tail.
        await redis.lpush(keys.queue, *ids)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(push_when_all_block)
                await consumer.run(stopping)
        events: Any = await redis.xrange(keys.events, "-", "+")
        started = [e["id"] for _, e in events if e.get("status") == "building"]
    finally:
        await redis.aclose()

    assert started == ids
    assert sorted(ran) == sorted(ids)
