"""Fair queueing (shared/redis/lua/_fair.lua) on fakeredis: priorities first, then
submitters in turn, then arrival order within a submitter and priority; in both
stages' queues, through every way a job enters one (submit, hand-off, retry, revive)."""

from __future__ import annotations

import itertools

import fakeredis
import pytest

from shared.engine.jobs import JobStore, Priority, Status
from shared.engine.queue import pending
from shared.engine.stages import BUILD
from shared.redis.keys import Keys

pytestmark = pytest.mark.anyio

_ids = itertools.count(1)


async def submit(
    store: JobStore, submitter: str, count: int = 1, priority: Priority = Priority.NORMAL
) -> list[str]:
    """``count`` jobs of ``submitter`` on the ingest queue, in this order."""
    made = []
    for _ in range(count):
        job_id = f"{submitter}{next(_ids):03d}"
        await store.submit(
            job_id,
            service="site",
            repo_url="https://h/org/site",
            submitter=submitter,
            priority=priority,
        )
        made.append(job_id)
    return made


async def hand_on(store: JobStore, *ids: str) -> None:
    """Move jobs from ingest to the build queue, as the ingest stage does."""
    for job_id in ids:
        await store.transition(job_id, Status.QUEUED, ack=store.keys.ingest, push=store.keys.queue)


async def take(redis: fakeredis.FakeAsyncRedis, queue: str, count: int) -> list[str]:
    """The next ``count`` ids the way workers take them (the right end)."""
    return [str(await redis.rpop(queue)) for _ in range(count)]


async def test_one_submitter_is_plain_fifo(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    ids = await submit(store, "alice", 5)

    assert await pending(redis, keys.ingest) == ids


async def test_a_single_job_waits_at_most_one_turn_behind_thirty(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    many = await submit(store, "alice", 30)
    (single,) = await submit(store, "bob")

    order = await pending(redis, keys.ingest)

    assert order.index(single) == 1  # after alice's first, before her second
    assert [i for i in order if i != single] == many  # alice's stay in order


async def test_submitters_take_turns(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    a = await submit(store, "a", 3)
    b = await submit(store, "b", 3)
    c = await submit(store, "c", 3)

    order = await pending(redis, keys.ingest)

    assert order == [a[0], b[0], c[0], a[1], b[1], c[1], a[2], b[2], c[2]]


async def test_a_newcomer_joins_the_turn_being_served_not_the_first(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    """Turns already served are not owed to someone who was not there."""
    alice = await submit(store, "alice", 10)
    assert await take(redis, keys.ingest, 5) == alice[:5]
    bob = await submit(store, "bob", 3)

    order = await pending(redis, keys.ingest)

    assert order[:6] == [alice[5], bob[0], alice[6], bob[1], alice[7], bob[2]]


async def test_priorities_come_first_and_keep_fifo_within(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    low = await submit(store, "a", 2, Priority.LOW)
    normal = await submit(store, "a", 2)
    high = await submit(store, "b", 2, Priority.HIGH)
    late_high = await submit(store, "a", 1, Priority.HIGH)

    order = await pending(redis, keys.ingest)

    assert order[:3] == [high[0], late_high[0], high[1]]  # b and a take turns in 'high'
    assert order[3:] == normal + low


async def test_turns_lost_to_cancelled_jobs_cost_at_most_the_back_of_the_line(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    for job_id in await submit(store, "alice", 10):
        await store.cancel(job_id, "changed my mind")
    bob = await submit(store, "bob", 3)
    (alice,) = await submit(store, "alice")

    assert await pending(redis, keys.ingest) == [*bob, alice]


async def test_the_build_queue_orders_by_turns_of_its_own(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    """Turns in the ingest queue say nothing of the build queue: bob's one job, handed
    on last, is still second there."""
    alice = await submit(store, "alice", 6)
    (bob,) = await submit(store, "bob")
    await take(redis, keys.ingest, 7)
    await hand_on(store, *alice, bob)

    order = await pending(redis, keys.queue)

    assert order == [alice[0], bob, *alice[1:]]


async def test_a_retry_takes_a_new_turn_and_recovery_goes_first(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    a = await submit(store, "a", 3)
    b = await submit(store, "b", 1)
    await take(redis, keys.ingest, 4)
    await hand_on(store, *a, *b)  # a0 b0 a1 a2
    first = await take(redis, keys.queue, 1)
    assert first == [a[0]]

    # a0's build is retried later: it queues behind the turns handed out meanwhile.
    await store.transition(a[0], Status.QUEUED, push=keys.queue)
    # A dead worker's job goes back to the head: it is next, whatever its turn.
    await store.transition(b[0], Status.QUEUED, ack=keys.queue, push=keys.queue, head=True)

    assert await pending(redis, keys.queue) == [b[0], a[1], a[2], a[0]]


async def test_a_revived_job_takes_a_new_turn(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    (old,) = await submit(store, "alice")
    await store.cancel(old, "by mistake")
    bob = await submit(store, "bob", 2)

    await store.revive(old, BUILD)

    assert await pending(redis, keys.queue) == [old]
    assert await pending(redis, keys.ingest) == bob
    assert await redis.hget(keys.job(old), "status") == Status.QUEUED.value


async def test_the_record_says_who_asked_and_how_urgent(store: JobStore) -> None:
    (job_id,) = await submit(store, "carol", 1, Priority.LOW)

    record = await store.get(job_id)

    assert record is not None
    assert (record.submitter, record.priority) == ("carol", Priority.LOW)
