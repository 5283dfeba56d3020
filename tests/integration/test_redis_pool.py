"""The daemons' bounded Redis pool on a real valkey: at most ``max_connections``
connections; a caller past them waits its turn (first come, first served) or, past the
pool's timeout, gets a ConnectionError; a failed checkout gives its slot back."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.core.settings import load_settings
from shared.redis.client import BoundedPool, make_redis

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_callers_past_the_bound_wait_in_order_and_share_the_connections(
    valkey_url: str,
) -> None:
    redis = make_redis(load_settings(environ={}, redis_url=valkey_url, redis_max_connections=2))
    pool = redis.connection_pool
    assert isinstance(pool, BoundedPool)
    order: list[int] = []

    async def call(i: int) -> None:
        await redis.blpop([f"pool-test-{i}"], timeout=0.2)  # holds its connection 0.2 s
        order.append(i)

    try:
        await asyncio.gather(*(call(i) for i in range(6)))
        # Two at a time, in the order they asked: 0 and 1 at once, then 2 and 3, then 4, 5.
        assert [set(order[:2]), set(order[2:4]), set(order[4:])] == [{0, 1}, {2, 3}, {4, 5}]
        assert len(pool._available_connections) + len(pool._in_use_connections) == 2
    finally:
        await redis.aclose()


async def test_a_caller_waits_no_longer_than_the_timeout(valkey_url: str) -> None:
    pool = BoundedPool.from_url(valkey_url, max_connections=1, timeout=0.2)
    redis = Redis.from_pool(pool)
    try:
        holder = asyncio.create_task(redis.blpop(["pool-test-hold"], timeout=1))
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await redis.ping()
        await holder
        assert await redis.ping() is True  # the slot came back
    finally:
        await redis.aclose()


async def test_a_connection_that_cannot_connect_gives_its_slot_back() -> None:
    pool = BoundedPool.from_url("redis://127.0.0.1:1/0", max_connections=1, timeout=0.2)
    redis = Redis.from_pool(pool)
    try:
        for _ in range(3):  # each failure gives the one slot back, once
            with pytest.raises(RedisConnectionError, match="connecting to 127"):
                await pool.get_connection()
            assert pool._slots is not None
            assert pool._slots._value == 1  # neither kept nor given back twice
    finally:
        await redis.aclose()
