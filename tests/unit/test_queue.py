"""shared/engine/queue.py: a reliable FIFO (LPUSH in, BLMOVE RIGHT->LEFT out) on fakeredis."""

from __future__ import annotations

import time

import fakeredis
import pytest

from shared.engine.queue import Queue
from shared.redis.keys import Keys

pytestmark = pytest.mark.anyio


@pytest.fixture
def queue(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> Queue:
    return Queue(redis, keys.queue, keys.active("w1"))


async def test_claims_come_out_in_push_order(queue: Queue) -> None:
    await queue.push("a")
    await queue.push("b", "c")

    claimed = [await queue.take(0.1) for _ in range(3)]

    assert claimed == ["a", "b", "c"]


async def test_push_returns_the_new_length(queue: Queue) -> None:
    assert await queue.push("a") == 1
    assert await queue.push("b", "c") == 3
    assert await queue.length() == 3


async def test_claim_moves_the_id_into_the_active_list(
    queue: Queue, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await queue.push("a", "b")

    assert await queue.take(0.1) == "a"

    assert await redis.lrange(keys.active("w1"), 0, -1) == ["a"]
    assert await queue.in_flight() == ["a"]
    assert await queue.pending() == ["b"]


async def test_ack_removes_the_id_from_the_active_list(queue: Queue) -> None:
    await queue.push("a", "b")
    await queue.take(0.1)
    await queue.take(0.1)

    assert await queue.ack("a") is True
    assert await queue.in_flight() == ["b"]
    assert await queue.ack("a") is False


async def test_pending_lists_oldest_first_and_respects_the_limit(queue: Queue) -> None:
    await queue.push("a", "b", "c", "d")

    assert await queue.pending() == ["a", "b", "c", "d"]
    assert await queue.pending(limit=2) == ["a", "b"]
    assert await queue.take(0.1) == "a"  # pending's first is what take returns next


async def test_claim_on_an_empty_queue_returns_none_after_the_timeout(queue: Queue) -> None:
    started = time.monotonic()

    assert await queue.take(0.05) is None

    assert time.monotonic() - started < 2
    assert await queue.in_flight() == []


async def test_two_workers_never_claim_the_same_id(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    w1 = Queue(redis, keys.queue, keys.active("w1"))
    w2 = Queue(redis, keys.queue, keys.active("w2"))
    await w1.push(*[f"j{i}" for i in range(10)])

    got1, got2 = [], []
    for _ in range(5):
        got1.append(await w1.take(0.1))
        got2.append(await w2.take(0.1))

    assert set(got1).isdisjoint(got2)
    assert sorted(got1 + got2) == sorted(f"j{i}" for i in range(10))
    assert await w1.in_flight() == got1[::-1]
    assert await w2.in_flight() == got2[::-1]
    assert await w1.length() == 0
