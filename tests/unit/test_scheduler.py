"""shared/engine/scheduler.py on fakeredis with Lua: due retries go back to their
stage's list, once, however many promoters race. Due times come from the FakeClock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import fakeredis
import pytest

from shared.engine.jobs import JobStore, Status
from shared.engine.scheduler import release_due
from shared.engine.stages import BUILD, INGEST, Stage
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio


# --- the one place that knows how a job is parked in delayed ----------------------


async def park(
    store: JobStore,
    job_id: str,
    stage: Stage,
    *,
    due_in_s: float,
    status: Status = Status.RETRYING,
) -> int:
    """Submit ``job_id``, start it in ``stage`` and park it in delayed; returns its due ms."""
    keys = store.keys
    await store.submit(job_id, service="site", repo_url="https://h/org/site")
    if stage is BUILD:
        await store.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue)
    claimed = await store.take(
        stage.queue(keys), keys.active("w"), stage.started_status, worker="w"
    )
    assert claimed is not None
    assert claimed.job_id == job_id
    due = int((store.clock() + due_in_s) * 1000)
    await store.transition(
        job_id,
        status,
        ack=keys.active("w"),
        delay_until_ms=due,
        retry_stage=stage.name,
        error="connection reset",
    )
    return due


# --- helpers ----------------------------------------------------------------------


async def next_ids(redis: fakeredis.FakeAsyncRedis, key: str) -> list[str]:
    return list(reversed(await redis.lrange(key, 0, -1)))


async def status(store: JobStore, job_id: str) -> Status:
    record = await store.get(job_id)
    assert record is not None
    return record.status


# --- tests ------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [INGEST, BUILD], ids=lambda s: s.name)
async def test_a_due_retry_goes_back_to_its_stages_list_at_its_resume_status(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock, stage: Stage
) -> None:
    await park(store, "job-a", stage, due_in_s=1.0)
    clock.advance(1.0)

    assert await release_due(redis, keys, store) == (1, None)

    assert await next_ids(redis, stage.queue(keys)) == ["job-a"]
    assert await status(store, "job-a") == stage.resume_status
    assert await redis.zcard(keys.delayed) == 0


async def test_a_retry_not_yet_due_stays_delayed_and_its_due_time_is_reported(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    due = await park(store, "job-a", BUILD, due_in_s=1.0)
    clock.advance(0.999)

    assert await release_due(redis, keys, store) == (0, due)

    assert await redis.llen(keys.queue) == 0
    assert await status(store, "job-a") == Status.RETRYING


async def test_only_due_jobs_move_and_the_next_due_time_is_the_earliest_left(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await park(store, "job-a", BUILD, due_in_s=1.0)
    later = await park(store, "job-b", BUILD, due_in_s=5.0)
    await park(store, "job-c", BUILD, due_in_s=9.0)
    clock.advance(2.0)

    assert await release_due(redis, keys, store) == (1, later)
    assert await next_ids(redis, keys.queue) == ["job-a"]


async def test_a_job_waiting_for_a_deploy_lock_goes_back_to_the_build_queue(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await park(store, "job-a", BUILD, due_in_s=1.0, status=Status.WAITING)
    clock.advance(1.0)

    assert await release_due(redis, keys, store) == (1, None)
    assert await next_ids(redis, keys.queue) == ["job-a"]
    assert await status(store, "job-a") == Status.QUEUED


async def test_a_second_promotion_of_the_same_due_time_moves_nothing(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await park(store, "job-a", BUILD, due_in_s=1.0)
    clock.advance(1.0)

    assert await release_due(redis, keys, store) == (1, None)
    assert await release_due(redis, keys, store) == (0, None)
    assert await next_ids(redis, keys.queue) == ["job-a"]


class BarrierRedis:
    """A client whose first ``zrangebyscore`` returns only when every racer has read
    the due list: both promoters then try to move the same ids."""

    def __init__(self, inner: fakeredis.FakeAsyncRedis, arrived: list[int], all_in: anyio.Event):
        self.inner = inner
        self.arrived = arrived
        self.all_in = all_in

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def zrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
        due = await self.inner.zrangebyscore(*args, **kwargs)
        self.arrived.append(1)
        if len(self.arrived) == 2:
            self.all_in.set()
        await self.all_in.wait()
        return due


async def test_two_promoters_that_read_the_same_due_jobs_move_each_once(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await park(store, "job-a", BUILD, due_in_s=1.0)
    await park(store, "job-b", INGEST, due_in_s=1.0)
    clock.advance(1.0)
    arrived: list[int] = []
    all_in = anyio.Event()
    moved: list[int] = []

    async def promoter() -> None:
        racer: Any = BarrierRedis(redis, arrived, all_in)
        count, _ = await release_due(racer, keys, store)
        moved.append(count)

    async with anyio.create_task_group() as tg:
        tg.start_soon(promoter)
        tg.start_soon(promoter)

    assert sum(moved) == 2
    assert await next_ids(redis, keys.queue) == ["job-a"]
    assert await next_ids(redis, keys.ingest) == ["job-b"]
    assert await redis.zcard(keys.delayed) == 0


async def test_a_retry_cancelled_while_delayed_is_never_promoted(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await park(store, "job-a", BUILD, due_in_s=1.0)
    await store.cancel("job-a", "no longer wanted")
    clock.advance(1.0)

    assert await release_due(redis, keys, store) == (0, None)
    assert await redis.llen(keys.queue) == 0
    assert await status(store, "job-a") == Status.CANCELLED
