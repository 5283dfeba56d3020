"""shared/engine/queue.py on fakeredis: the blocking take, ack, counts and pending ids."""

from __future__ import annotations

import fakeredis
import pytest

from shared.engine.queue import Queue, QueueCounts, pending, read_counts
from shared.redis.keys import Keys

pytestmark = pytest.mark.anyio


@pytest.fixture
def queue(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> Queue:
    return Queue(redis, keys.queue, keys.active("w1"))


async def push(redis: fakeredis.FakeAsyncRedis, key: str, *ids: str) -> None:
    """What submit.lua and hand-on transitions do: LPUSH at the tail of the line."""
    await redis.lpush(key, *ids)


async def test_takes_come_out_in_push_order(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await push(redis, keys.queue, "a")
    await push(redis, keys.queue, "b", "c")

    taken = [await queue.take(0.1) for _ in range(3)]

    assert taken == ["a", "b", "c"]


async def test_take_moves_the_id_into_the_active_list(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await push(redis, keys.queue, "a", "b")

    assert await queue.take(0.1) == "a"

    assert await redis.lrange(keys.active("w1"), 0, -1) == ["a"]
    assert await pending(redis, keys.queue) == ["b"]


async def test_ack_removes_the_id_from_the_active_list(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await push(redis, keys.queue, "a", "b")
    await queue.take(0.1)
    await queue.take(0.1)

    assert await queue.ack("a") is True
    assert await redis.lrange(keys.active("w1"), 0, -1) == ["b"]
    assert await queue.ack("a") is False


async def test_pending_lists_the_next_first_and_respects_the_limit(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await push(redis, keys.queue, "a", "b", "c", "d")

    assert await pending(redis, keys.queue) == ["a", "b", "c", "d"]
    assert await pending(redis, keys.queue, limit=2) == ["a", "b"]
    assert await queue.take(0.1) == "a"  # pending's first is what take returns next


async def test_take_on_an_empty_queue_returns_none_and_moves_nothing(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await queue.take(0.05) is None

    assert await redis.llen(keys.active("w1")) == 0


async def test_two_workers_never_take_the_same_id(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    w1 = Queue(redis, keys.queue, keys.active("w1"))
    w2 = Queue(redis, keys.queue, keys.active("w2"))
    await push(redis, keys.queue, *[f"j{i}" for i in range(10)])

    got1, got2 = [], []
    for _ in range(5):
        got1.append(await w1.take(0.1))
        got2.append(await w2.take(0.1))

    assert set(got1).isdisjoint(got2)
    assert sorted(got1 + got2) == sorted(f"j{i}" for i in range(10))
    assert await redis.lrange(keys.active("w1"), 0, -1) == got1[::-1]
    assert await redis.lrange(keys.active("w2"), 0, -1) == got2[::-1]
    assert await redis.llen(keys.queue) == 0


async def test_counts_read_every_queue_and_the_pause_flag(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await read_counts(redis, keys) == QueueCounts(0, 0, 0, 0, paused=False)
    await push(redis, keys.queue, "a", "b", "c")
    await push(redis, keys.ingest, "d")
    await redis.zadd(keys.delayed, {"e": 1, "f": 2})
    await push(redis, keys.dead, "g", "h", "i", "j")
    await redis.hset(keys.fleet, "paused", "1")

    assert await read_counts(redis, keys) == QueueCounts(
        build=3, ingest=1, delayed=2, dead=4, paused=True
    )
