"""DeployLock.running() on a real valkey-server: the shared watchdog and kept pub/sub."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis

from shared.coord.locks import DeployLock, LockTimeoutError
from shared.core.settings import Settings
from shared.redis.client import make_redis
from shared.redis.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def redis(bq_settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(bq_settings)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys(bq_settings: Settings) -> Keys:
    return Keys(bq_settings.namespace)


async def subscriber_ids(redis: Redis) -> set[str]:
    """The ids of the server's clients subscribed to a channel now."""
    return {c["id"] for c in await redis.client_list() if int(c.get("sub", 0)) > 0}


async def in_line(redis: Redis, keys: Keys, service: str) -> None:
    with anyio.fail_after(10):
        while not await redis.hlen(keys.lock_waiters(service)):  # noqa: ASYNC110 - Redis state
            await anyio.sleep(0.005)


async def test_successive_waits_inside_running_use_one_subscriber_connection(
    redis: Redis, keys: Keys
) -> None:
    holder = DeployLock(redis, keys, events_max=1000, owner="holder")
    waiter = DeployLock(redis, keys, events_max=1000, owner="waiter", poll_max_s=30)
    seen: set[str] = set()
    fences: list[int] = []

    async def wait(service: str) -> None:
        lease = await waiter.lock(service, timeout_s=20)
        fences.append(lease.fence)
        await waiter.release(lease)

    async with waiter.running():
        for service in ("web", "api", "web", "api"):
            held = await holder.lock(service)
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, service)
                await in_line(redis, keys, service)
                seen |= await subscriber_ids(redis)
                assert await holder.release(held) is True
    assert fences == [2, 2, 4, 4]
    assert len(seen) == 1
    with anyio.fail_after(10):  # closed when running() ends
        while seen & {c["id"] for c in await redis.client_list()}:  # noqa: ASYNC110 - server state
            await anyio.sleep(0.01)


async def test_the_shared_watchdog_keeps_a_short_ttl_lock_from_a_rival(
    redis: Redis, keys: Keys
) -> None:
    deployer = DeployLock(redis, keys, events_max=1000, owner="deployer", ttl_ms=300)
    rival = DeployLock(redis, keys, events_max=1000, owner="rival", poll_max_s=30)
    async with deployer.running():
        async with deployer.holding("web", cancel_on_loss=True) as lease:
            with pytest.raises(LockTimeoutError):
                await rival.lock("web", timeout_s=1.0)  # over three TTLs: renewed all along
            assert lease.still_held()
        lease = await rival.lock("web", timeout_s=5)
        assert lease.fence == 2
        assert await rival.release(lease) is True
