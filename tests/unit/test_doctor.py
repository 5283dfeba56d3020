"""shared/cli/doctor.py on fakeredis with Lua: every unended job sits in exactly one
place; the doctor finds lost, duplicated, left-behind and orphaned ids, and ``fix``
repairs them so that a second check is clean."""

from __future__ import annotations

from typing import TYPE_CHECKING

import fakeredis
import pytest

from shared.cli.doctor import Doctor, Finding
from shared.core.settings import Settings
from shared.engine.jobs import JobStore, Status
from shared.engine.scheduler import release_due
from shared.engine.workers import Registry
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio

STALE_S = 15.0  # the default BUILDQ_WORKER_STALE_S


# --- the one place that knows how the doctor, workers and claims are constructed ---


async def check(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    clock: FakeClock,
    *,
    fix: bool = False,
) -> list[Finding]:
    return await Doctor(redis, keys, settings, clock).check(fix=fix)


async def start_worker(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock, worker: str
) -> None:
    registry = Registry(
        redis, keys, worker, kind="deployer", slots=1, queue=keys.queue, clock=clock
    )
    await registry.beat(1)


async def claim_build(store: JobStore, worker: str) -> str:
    claimed = await store.take(
        store.keys.queue, store.keys.active(worker), Status.BUILDING, worker=worker
    )
    assert claimed is not None
    return claimed.job_id


# --- helpers ----------------------------------------------------------------------


async def submit(store: JobStore, job_id: str) -> None:
    """A new job, waiting in ingest."""
    await store.submit(job_id, service="site", repo_url="https://h/org/site")


async def queue(store: JobStore, job_id: str) -> None:
    """A job that passed ingest and waits in the build queue."""
    await submit(store, job_id)
    keys = store.keys
    await store.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue)


async def next_ids(redis: fakeredis.FakeAsyncRedis, key: str) -> list[str]:
    return list(reversed(await redis.lrange(key, 0, -1)))


def problems(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.job_id, f.problem) for f in findings]


# --- a consistent state -----------------------------------------------------------


async def test_jobs_each_in_one_place_give_no_findings(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await start_worker(redis, keys, clock, "w1")
    for job_id in ("running", "delayed", "dead", "live"):
        await queue(store, job_id)
        assert await claim_build(store, "w1") == job_id
    active = keys.active("w1")
    await store.transition(
        "delayed", Status.RETRYING, ack=active, delay_until_ms=10**13, retry_stage="deployer"
    )
    await store.transition("dead", Status.FAILED, ack=active, push=keys.dead, dead="1")
    await store.transition("live", Status.LIVE, ack=active)
    await queue(store, "in-queue")
    await submit(store, "in-ingest")

    assert await check(redis, keys, settings, clock) == []


# --- lost -------------------------------------------------------------------------


async def test_a_queued_job_in_no_list_is_lost_and_fix_puts_it_at_the_head_of_the_queue(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "waiting")
    await submit(store, "lost")
    await store.transition("lost", Status.QUEUED, ack=keys.ingest)  # the push never happened

    found = await check(redis, keys, settings, clock)
    assert problems(found) == [("lost", "lost")]
    assert found[0].fixed is False
    assert await next_ids(redis, keys.queue) == ["waiting"]  # a check alone changes nothing

    fixed = await check(redis, keys, settings, clock, fix=True)
    assert [f.fixed for f in fixed] == [True]
    assert await next_ids(redis, keys.queue) == ["lost", "waiting"]
    record = await store.get("lost")
    assert record is not None
    assert record.status is Status.QUEUED
    assert await check(redis, keys, settings, clock) == []


async def test_a_lost_ingest_job_goes_back_to_ingest_as_accepted(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await submit(store, "lost")
    await store.transition("lost", Status.CLONING, ack=keys.ingest)  # its worker's list is gone

    assert problems(await check(redis, keys, settings, clock, fix=True)) == [("lost", "lost")]

    assert await next_ids(redis, keys.ingest) == ["lost"]
    record = await store.get("lost")
    assert record is not None
    assert record.status is Status.ACCEPTED
    assert await check(redis, keys, settings, clock) == []


async def test_a_lost_build_job_with_an_old_ingest_retry_goes_back_to_the_build_queue(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    # It was retried during ingest once (retry_stage=ingest), then cloned and queued
    # for its build: its status, not that old retry, says where it belongs now.
    await submit(store, "lost")
    await store.transition("lost", Status.QUEUED, ack=keys.ingest, retry_stage="ingest")

    assert problems(await check(redis, keys, settings, clock, fix=True)) == [("lost", "lost")]

    assert await next_ids(redis, keys.queue) == ["lost"]
    assert await redis.llen(keys.ingest) == 0
    record = await store.get("lost")
    assert record is not None
    assert record.status is Status.QUEUED


async def test_a_lost_retry_is_fixed_into_delayed_due_now(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "lost")
    await store.transition("lost", Status.RETRYING, ack=keys.queue, retry_stage="deployer")

    assert problems(await check(redis, keys, settings, clock, fix=True)) == [("lost", "lost")]

    assert await redis.zscore(keys.delayed, "lost") == int(clock() * 1000)
    assert await check(redis, keys, settings, clock) == []
    assert await release_due(redis, keys, store) == (1, None)
    assert await next_ids(redis, keys.queue) == ["lost"]


# --- duplicated -------------------------------------------------------------------


async def test_an_id_queued_twice_is_duplicated_and_fix_keeps_one(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "twice")
    await queue(store, "other")
    await redis.lpush(keys.queue, "twice")  # a retried push that had already landed

    found = await check(redis, keys, settings, clock, fix=True)

    assert problems(found) == [("twice", "duplicated")]
    assert await next_ids(redis, keys.queue) == ["twice", "other"]
    assert await check(redis, keys, settings, clock) == []


async def test_an_id_in_the_queue_and_an_active_list_keeps_only_the_active_copy(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "job-a")
    await start_worker(redis, keys, clock, "w1")
    await claim_build(store, "w1")
    await redis.lpush(keys.queue, "job-a")

    found = await check(redis, keys, settings, clock, fix=True)

    assert problems(found) == [("job-a", "duplicated")]
    assert await redis.llen(keys.queue) == 0
    assert await redis.lrange(keys.active("w1"), 0, -1) == ["job-a"]
    assert await check(redis, keys, settings, clock) == []


# --- left behind ------------------------------------------------------------------


async def test_an_ended_job_still_queued_is_left_behind_and_fix_removes_it(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "ended")
    await store.cancel("ended", "not wanted")
    await redis.lpush(keys.queue, "ended")

    found = await check(redis, keys, settings, clock, fix=True)

    assert problems(found) == [("ended", "left behind")]
    assert "cancelled" in found[0].detail
    assert await redis.llen(keys.queue) == 0
    assert await check(redis, keys, settings, clock) == []


async def test_an_id_whose_record_expired_is_left_behind_and_fix_removes_it(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await redis.lpush(keys.ingest, "gone")

    found = await check(redis, keys, settings, clock, fix=True)

    assert problems(found) == [("gone", "left behind")]
    assert "expired" in found[0].detail
    assert await redis.llen(keys.ingest) == 0


async def test_a_dead_lettered_failure_in_dead_is_not_a_finding(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "dead")
    await store.transition("dead", Status.FAILED, ack=keys.queue, push=keys.dead, dead="1")

    assert await check(redis, keys, settings, clock, fix=True) == []
    assert await redis.lrange(keys.dead, 0, -1) == ["dead"]


# --- orphaned ---------------------------------------------------------------------


async def test_a_job_held_by_a_stale_worker_is_orphaned_and_fix_requeues_it(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "held")
    await queue(store, "waiting")
    await start_worker(redis, keys, clock, "w1")
    await claim_build(store, "w1")
    assert await check(redis, keys, settings, clock) == []  # w1 is alive
    clock.advance(STALE_S + 1)

    found = await check(redis, keys, settings, clock, fix=True)

    assert problems(found) == [("held", "orphaned")]
    assert found[0].fixed is True
    assert await next_ids(redis, keys.queue) == ["held", "waiting"]
    assert await redis.llen(keys.active("w1")) == 0
    record = await store.get("held")
    assert record is not None
    assert record.status is Status.QUEUED
    assert await check(redis, keys, settings, clock) == []


async def test_an_active_list_of_an_unregistered_worker_is_orphaned(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    store: JobStore,
    clock: FakeClock,
) -> None:
    await queue(store, "held")
    await claim_build(store, "never-registered")

    found = await check(redis, keys, settings, clock, fix=True)

    assert problems(found) == [("held", "orphaned")]
    assert await next_ids(redis, keys.queue) == ["held"]
