"""shared/engine/recovery.py on fakeredis with Lua: a dead worker's jobs go back to the
head of their stage's list, once, by one recoverer at a time. Worker heartbeats and
the stale cutoff both come from the FakeClock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import fakeredis
import pytest

from shared.engine.jobs import JobStore, Status
from shared.engine.logs import read_log
from shared.engine.recovery import recover_stale_workers
from shared.engine.stages import BUILD, INGEST, Stage
from shared.engine.workers import Registry
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio

STALE_S = 15.0
DEAD = "deployer-dead-1"
ALIVE = "deployer-alive-1"


# --- the one place that knows how workers, claims and recovery are called ---------


async def register(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock, worker: str, stage: Stage
) -> None:
    """``worker`` heartbeats now (by the FakeClock)."""
    registry = Registry(
        redis, keys, worker, kind=stage.name, slots=2, queue=stage.queue(keys), clock=clock
    )
    await registry.beat(0)


async def claim_as(store: JobStore, worker: str, stage: Stage) -> str:
    """``worker`` claims the next job of ``stage`` as a consumer does (counting the attempt)."""
    claimed = await store.take(
        stage.queue(store.keys),
        store.keys.active(worker),
        stage.started_status,
        incr={stage.attempts_field: 1},
        worker=worker,
    )
    assert claimed is not None
    return claimed.job_id


async def recover(redis: fakeredis.FakeAsyncRedis, store: JobStore) -> list[tuple[str, str]]:
    return await recover_stale_workers(redis, store, stale_s=STALE_S, lock_ttl_ms=60_000)


# --- helpers ----------------------------------------------------------------------


async def submit(store: JobStore, job_id: str, stage: Stage = BUILD) -> None:
    """A new job waiting in ``stage``'s list."""
    await store.submit(job_id, service="site", repo_url="https://h/org/site")
    if stage is BUILD:
        await store.transition(
            job_id, Status.QUEUED, ack=store.keys.ingest, push=store.keys.queue, commit="c0ffee"
        )


async def next_ids(redis: fakeredis.FakeAsyncRedis, key: str) -> list[str]:
    """A list's ids in the order they will be claimed (the head first)."""
    return list(reversed(await redis.lrange(key, 0, -1)))


async def status(store: JobStore, job_id: str) -> Status:
    record = await store.get(job_id)
    assert record is not None
    return record.status


# --- tests ------------------------------------------------------------------------


async def test_a_stale_workers_jobs_go_back_to_the_head_of_the_queue_in_claim_order(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    for job_id in ("job-a", "job-b", "job-c"):
        await submit(store, job_id)
    await register(redis, keys, clock, DEAD, BUILD)
    assert await claim_as(store, DEAD, BUILD) == "job-a"
    assert await claim_as(store, DEAD, BUILD) == "job-b"
    clock.advance(STALE_S + 1)

    recovered = await recover(redis, store)

    assert sorted(recovered) == [(DEAD, "job-a"), (DEAD, "job-b")]
    assert await next_ids(redis, keys.queue) == ["job-a", "job-b", "job-c"]
    assert await status(store, "job-a") == Status.QUEUED
    assert await status(store, "job-b") == Status.QUEUED
    assert await redis.llen(keys.active(DEAD)) == 0


async def test_a_stale_worker_is_forgotten_once_its_jobs_are_requeued(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)
    clock.advance(STALE_S + 1)

    await recover(redis, store)

    assert await redis.zscore(keys.workers, DEAD) is None
    assert not await redis.exists(keys.worker(DEAD), keys.active(DEAD))


async def test_a_requeued_job_says_why_in_its_log(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)
    clock.advance(STALE_S + 1)

    await recover(redis, store)

    lines = [entry.text for entry in await read_log(redis, keys, "job-a")]
    assert f"buildq: requeued: worker {DEAD} stopped heartbeating" in lines


async def test_a_live_workers_jobs_are_left_alone(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await submit(store, "job-b")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)
    clock.advance(STALE_S + 1)
    await register(redis, keys, clock, ALIVE, BUILD)
    await claim_as(store, ALIVE, BUILD)

    recovered = await recover(redis, store)

    assert recovered == [(DEAD, "job-a")]
    assert await redis.lrange(keys.active(ALIVE), 0, -1) == ["job-b"]
    assert await status(store, "job-b") == Status.BUILDING
    assert await redis.zscore(keys.workers, ALIVE) is not None


async def test_a_worker_exactly_at_the_cutoff_is_stale_and_one_just_inside_it_is_not(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)

    clock.advance(STALE_S - 0.001)
    assert await recover_stale_workers(redis, store, stale_s=STALE_S, lock_ttl_ms=1) == []
    await redis.delete(keys.recovery_lock)  # as if the short lock had expired
    clock.advance(0.001)
    assert await recover(redis, store) == [(DEAD, "job-a")]


async def test_an_ingest_workers_jobs_go_back_to_ingest_as_accepted(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a", INGEST)
    await register(redis, keys, clock, "ingest-dead-1", INGEST)
    await claim_as(store, "ingest-dead-1", INGEST)
    assert await status(store, "job-a") == Status.CLONING
    clock.advance(STALE_S + 1)

    assert await recover(redis, store) == [("ingest-dead-1", "job-a")]

    assert await next_ids(redis, keys.ingest) == ["job-a"]
    assert await redis.llen(keys.queue) == 0
    assert await status(store, "job-a") == Status.ACCEPTED


async def test_two_recoverers_racing_requeue_each_job_once(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    for job_id in ("job-a", "job-b"):
        await submit(store, job_id)
        await register(redis, keys, clock, DEAD, BUILD)
        await claim_as(store, DEAD, BUILD)
    clock.advance(STALE_S + 1)
    results: list[list[tuple[str, str]]] = []

    async def one() -> None:
        results.append(await recover(redis, store))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)

    assert sorted(len(r) for r in results) == [0, 2]
    assert sorted(await next_ids(redis, keys.queue)) == ["job-a", "job-b"]


async def test_no_recovery_runs_while_another_worker_holds_the_recovery_lock(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)
    clock.advance(STALE_S + 1)
    await redis.set(keys.recovery_lock, "another-worker", px=60_000)

    assert await recover(redis, store) == []

    assert await redis.lrange(keys.active(DEAD), 0, -1) == ["job-a"]
    assert await status(store, "job-a") == Status.BUILDING


async def test_a_recovered_job_keeps_its_attempts_and_the_next_claim_counts_one_more(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)
    clock.advance(STALE_S + 1)
    await recover(redis, store)
    record = await store.get("job-a")
    assert record is not None
    assert record.attempts == 1

    await register(redis, keys, clock, ALIVE, BUILD)
    await claim_as(store, ALIVE, BUILD)

    record = await store.get("job-a")
    assert record is not None
    assert (record.attempts, record.worker) == (2, ALIVE)


async def test_an_ended_job_in_a_dead_workers_list_is_dropped_not_requeued(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await register(redis, keys, clock, DEAD, BUILD)
    await claim_as(store, DEAD, BUILD)
    await store.cancel("job-a", "cancelled while its worker hung")
    clock.advance(STALE_S + 1)

    assert await recover(redis, store) == []

    assert await redis.llen(keys.queue) == 0
    assert await redis.llen(keys.active(DEAD)) == 0
    assert await status(store, "job-a") == Status.CANCELLED
