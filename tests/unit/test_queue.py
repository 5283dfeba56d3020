"""shared/engine/queue.py on fakeredis (Lua via lupa): taking and starting jobs in one
round trip, ending a job and taking the next in one call, counts and pending ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import fakeredis
import pytest

from shared.engine.jobs import JobStore, Status
from shared.engine.queue import Queue, QueueCounts, pending, read_counts
from shared.engine.replies import Moved
from shared.engine.stages import BUILD
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio

ACTIVE_W1 = "w1"


@pytest.fixture
def queue(store: JobStore, keys: Keys) -> Queue:
    return Queue(store, BUILD, keys.active(ACTIVE_W1), fields={"worker": ACTIVE_W1})


async def queued(store: JobStore, *ids: str) -> None:
    """Jobs as the ingest stage leaves them: queued on the build queue, in this order."""
    for job_id in ids:
        await store.submit(job_id, service="site", repo_url="https://h/org/site")
        await store.transition(job_id, Status.QUEUED, ack=store.keys.ingest, push=store.keys.queue)


async def status(store: JobStore, job_id: str) -> str | None:
    return await store.redis.hget(store.keys.job(job_id), "status")


# --- the blocking take -------------------------------------------------------


async def test_wait_takes_the_oldest_and_starts_it_with_its_record(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a", "job-b")

    taken = await queue.wait(0.1)

    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-a"
    started = taken.claimed.started
    assert started.reply is Moved.CHANGED
    assert started.record["status"] == "building"
    assert started.record["attempts"] == "1"
    assert started.record["worker"] == ACTIVE_W1
    assert "p:building:start" in started.record
    assert await redis.lrange(keys.active(ACTIVE_W1), 0, -1) == ["job-a"]
    assert await pending(redis, keys.queue) == ["job-b"]
    assert taken.ended is None
    assert taken.dropped == ()


async def test_takes_come_out_in_queue_order(queue: Queue, store: JobStore) -> None:
    await queued(store, "job-a", "job-b", "job-c")

    ids = []
    for _ in range(3):
        taken = await queue.wait(0.1)
        assert taken.claimed is not None
        ids.append(taken.claimed.job_id)

    assert ids == ["job-a", "job-b", "job-c"]


async def test_wait_on_an_empty_queue_returns_nothing_and_moves_nothing(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    taken = await queue.wait(0.05)

    assert taken.claimed is None
    assert await redis.llen(keys.active(ACTIVE_W1)) == 0


async def test_an_id_whose_start_never_ran_is_started_by_the_next_wait(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    # BLMOVE moved it, then the start behind it was lost: it waits in the active list.
    await queued(store, "job-a")
    await redis.lmove(keys.queue, keys.active(ACTIVE_W1), "RIGHT", "LEFT")

    taken = await queue.wait(0.05)  # the queue itself is empty

    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-a"
    assert await status(store, "job-a") == "building"
    assert await redis.lrange(keys.active(ACTIVE_W1), 0, -1) == ["job-a"]


async def test_wait_leaves_running_jobs_in_the_active_list_alone(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a", "job-b")
    first = await queue.wait(0.1)
    assert first.claimed is not None
    await redis.lpush(keys.active(ACTIVE_W1), "job-a")  # a stale second copy of a running job

    taken = await queue.wait(0.1)

    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-b"
    record = await store.get("job-a")
    assert record is not None
    assert (record.status, record.attempts) == (Status.BUILDING, 1)  # not started twice


async def test_wait_drops_ended_jobs_from_the_active_list_and_says_which(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a", "job-b")
    await redis.lmove(keys.queue, keys.active(ACTIVE_W1), "RIGHT", "LEFT")
    await store.cancel("job-a", "changed my mind")  # cancelled between BLMOVE and start
    await redis.lpush(keys.active(ACTIVE_W1), "gone")  # a job whose record expired

    taken = await queue.wait(0.1)

    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-b"
    assert sorted(taken.dropped) == [("gone", ""), ("job-a", "cancelled")]
    assert await redis.lrange(keys.active(ACTIVE_W1), 0, -1) == ["job-b"]
    assert await status(store, "job-a") == "cancelled"


async def test_two_workers_never_take_the_same_job(store: JobStore, keys: Keys) -> None:
    w1 = Queue(store, BUILD, keys.active("w1"))
    w2 = Queue(store, BUILD, keys.active("w2"))
    ids = [f"job-{i}" for i in range(10)]
    await queued(store, *ids)

    got1, got2 = [], []
    for _ in range(5):
        for queue, got in ((w1, got1), (w2, got2)):
            taken = await queue.wait(0.1)
            assert taken.claimed is not None
            got.append(taken.claimed.job_id)

    assert set(got1).isdisjoint(got2)
    assert sorted(got1 + got2) == sorted(ids)
    assert await store.redis.lrange(keys.active("w1"), 0, -1) == got1[::-1]
    assert await store.redis.lrange(keys.active("w2"), 0, -1) == got2[::-1]
    assert await store.redis.llen(keys.queue) == 0


# --- ending a job and taking the next in one call ------------------------------


async def test_take_ends_a_job_and_starts_the_next_in_one_call(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a", "job-b")
    await queue.wait(0.1)
    end = store.move("job-a", Status.LIVE, ack=queue.active, fetch=True, url="http://x")

    taken = await queue.take(end)

    assert taken.ended is not None
    assert taken.ended.reply is Moved.CHANGED
    assert taken.ended.record["status"] == "live"
    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-b"
    assert taken.claimed.started.record["status"] == "building"
    record = await store.get("job-a")
    assert record is not None
    assert (record.status, record.url) == (Status.LIVE, "http://x")
    assert await redis.lrange(keys.active(ACTIVE_W1), 0, -1) == ["job-b"]
    assert await redis.llen(keys.queue) == 0


async def test_take_on_an_empty_queue_still_ends_the_job(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a")
    await queue.wait(0.1)

    taken = await queue.take(store.move("job-a", Status.FAILED, ack=queue.active, error="x"))

    assert taken.ended is not None
    assert taken.ended.changed
    assert taken.claimed is None
    assert await status(store, "job-a") == "failed"
    assert await redis.llen(keys.active(ACTIVE_W1)) == 0


async def test_take_can_move_the_ended_job_on_to_another_list(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await queued(store, "job-a")
    await queue.wait(0.1)
    due = int(clock() * 1000) + 5000

    await queue.take(
        store.move("job-a", Status.RETRYING, ack=queue.active, delay_until_ms=due, error="x")
    )

    assert await redis.zscore(keys.delayed, "job-a") == due
    assert await status(store, "job-a") == "retrying"
    assert await redis.llen(keys.active(ACTIVE_W1)) == 0


async def test_take_drops_a_cancelled_job_it_takes_without_starting_it(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a")
    await store.cancel("job-a", "changed my mind")
    await redis.lpush(keys.queue, "job-a")  # a stale copy, as a lost reply leaves one

    taken = await queue.take()

    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-a"
    assert taken.claimed.started.reply is Moved.ENDED
    assert await status(store, "job-a") == "cancelled"
    assert await redis.llen(keys.active(ACTIVE_W1)) == 0


async def test_take_only_ends_a_job_it_acks_from_its_own_active_list(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a", "job-b")
    await queue.wait(0.1)

    with pytest.raises(ValueError, match="active list"):
        await queue.take(store.move("job-a", Status.LIVE, ack=keys.active("someone-else")))

    assert await status(store, "job-a") == "building"
    assert await pending(redis, keys.queue) == ["job-b"]


# --- what the queues hold --------------------------------------------------------


async def test_pending_lists_the_next_first_and_respects_the_limit(
    queue: Queue, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queued(store, "job-a", "job-b", "job-c", "job-d")

    assert await pending(redis, keys.queue) == ["job-a", "job-b", "job-c", "job-d"]
    assert await pending(redis, keys.queue, limit=2) == ["job-a", "job-b"]
    taken = await queue.wait(0.1)
    assert taken.claimed is not None
    assert taken.claimed.job_id == "job-a"  # pending's first is what a take starts next


async def test_counts_read_every_queue_and_the_pause_flag(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await read_counts(redis, keys) == QueueCounts(0, 0, 0, 0, paused=False)
    await redis.lpush(keys.queue, "a", "b", "c")
    await redis.lpush(keys.ingest, "d")
    await redis.zadd(keys.delayed, {"e": 1, "f": 2})
    await redis.lpush(keys.dead, "g", "h", "i", "j")
    await redis.hset(keys.fleet, "paused", "1")

    assert await read_counts(redis, keys) == QueueCounts(
        build=3, ingest=1, delayed=2, dead=4, paused=True
    )
