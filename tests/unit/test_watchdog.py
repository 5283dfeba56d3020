"""shared/coord/watchdog.py: one task renews every watched lease; losses are reported."""

from __future__ import annotations

import time

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.coord.lockbook import Lease
from shared.coord.watchdog import Watchdog

pytestmark = pytest.mark.anyio


def lease_of(service: str, ttl_ms: int, *, valid_s: float = 60.0) -> Lease:
    return Lease(
        services=(service,),
        token=f"token-{service}",
        fences={service: 1},
        owner="deployer",
        task="deploy",
        ttl_ms=ttl_ms,
        valid_until=time.monotonic() + valid_s,
    )


class FakeExtend:
    """Stands in for ``DeployLock.extend``: records renewals, or loses the lease."""

    def __init__(self, *, keep: bool = True, fail_first: int = 0) -> None:
        self.keep = keep
        self.fail_first = fail_first
        self.renewed: list[str] = []
        self.changed = anyio.Event()

    async def __call__(self, lease: Lease) -> bool:
        self.changed.set()
        self.changed = anyio.Event()
        if self.fail_first > 0:
            self.fail_first -= 1
            raise RedisConnectionError("connection reset")
        if not self.keep:
            lease.lost.set()
            return False
        self.renewed.append(lease.services[0])
        lease.valid_until = time.monotonic() + lease.ttl_ms / 1000
        return True

    async def until(self, service: str, times: int) -> None:
        with anyio.fail_after(5):
            while self.renewed.count(service) < times:
                await self.changed.wait()


def watchdog(extend: FakeExtend, *, idle_period_s: float = 60.0) -> Watchdog:
    return Watchdog(extend, idle_period_s=idle_period_s, monotonic=time.monotonic)


async def test_one_task_renews_every_watched_lease_again_and_again() -> None:
    extend = FakeExtend()
    dog = watchdog(extend)
    web, api = lease_of("web", 30), lease_of("api", 45)
    async with anyio.create_task_group() as tg:
        await tg.start(dog.run)
        assert dog.running
        dog.watch(web)
        dog.watch(api)
        await extend.until("web", 3)
        await extend.until("api", 3)
        dog.unwatch(web)
        dog.unwatch(api)
        tg.cancel_scope.cancel()
    assert not dog.running
    assert not web.lost.is_set()
    assert not api.lost.is_set()


async def test_a_short_ttl_wakes_a_watchdog_sleeping_for_its_idle_period() -> None:
    extend = FakeExtend()
    dog = watchdog(extend, idle_period_s=3600)
    async with anyio.create_task_group() as tg:
        await tg.start(dog.run)
        web = lease_of("web", 30)
        dog.watch(web)  # due in 10 ms, long before the idle period ends
        await extend.until("web", 2)
        dog.unwatch(web)
        tg.cancel_scope.cancel()


async def test_an_unwatched_lease_is_renewed_no_more() -> None:
    extend = FakeExtend()
    dog = watchdog(extend)
    web, api = lease_of("web", 30), lease_of("api", 30)
    async with anyio.create_task_group() as tg:
        await tg.start(dog.run)
        dog.watch(web)
        await extend.until("web", 1)
        dog.unwatch(web)
        renewed = extend.renewed.count("web")
        dog.watch(api)
        await extend.until("api", 3)  # several periods later
        dog.unwatch(api)
        tg.cancel_scope.cancel()
    assert extend.renewed.count("web") == renewed


async def test_a_lease_that_is_no_longer_ours_is_lost_and_its_block_cancelled() -> None:
    dog = watchdog(FakeExtend(keep=False))
    web = lease_of("web", 30)
    reached_end = False
    async with anyio.create_task_group() as tg:
        await tg.start(dog.run)
        with anyio.fail_after(5), anyio.CancelScope() as block:
            dog.watch(web, block)
            await anyio.sleep_forever()
            reached_end = True
        tg.cancel_scope.cancel()
    assert block.cancelled_caught
    assert not reached_end
    assert web.lost.is_set()


async def test_a_lease_paused_past_its_ttl_is_lost_without_asking_redis() -> None:
    extend = FakeExtend()
    dog = watchdog(extend)
    web = lease_of("web", 30, valid_s=-1.0)  # the process slept through its TTL
    async with anyio.create_task_group() as tg:
        await tg.start(dog.run)
        dog.watch(web)
        with anyio.fail_after(5):
            await web.lost.wait()
        tg.cancel_scope.cancel()
    assert extend.renewed == []


async def test_a_redis_error_is_retried_at_the_next_period_and_loses_nothing() -> None:
    extend = FakeExtend(fail_first=2)
    dog = watchdog(extend)
    web = lease_of("web", 30)
    async with anyio.create_task_group() as tg:
        await tg.start(dog.run)
        dog.watch(web)
        await extend.until("web", 2)
        dog.unwatch(web)
        tg.cancel_scope.cancel()
    assert extend.fail_first == 0
    assert not web.lost.is_set()


async def test_leases_still_watched_when_the_watchdog_stops_are_lost() -> None:
    dog = watchdog(FakeExtend())
    web = lease_of("web", 60_000)
    with anyio.CancelScope() as block:
        async with anyio.create_task_group() as tg:
            await tg.start(dog.run)
            dog.watch(web, block)
            tg.cancel_scope.cancel()  # nobody renews ``web`` from here on
        await anyio.sleep_forever()
    assert block.cancelled_caught
    assert web.lost.is_set()
