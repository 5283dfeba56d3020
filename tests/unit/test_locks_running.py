"""DeployLock.running(): one shared watchdog for every hold, pub/sub kept between waits."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import anyio
import fakeredis
import pytest

from shared.coord.locks import DeployLock, LockError, LockLostError
from shared.redis.keys import Keys

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_long_collection_pause() -> Iterator[None]:
    """These tests hold locks with a TTL of 150 ms. A full collection of what the
    suite has built up before (moto, boto) pauses the loop for longer, and a paused
    holder rightly loses its lock; objects frozen here are not scanned again."""
    gc.freeze()
    yield
    gc.unfreeze()


def make(redis: fakeredis.FakeAsyncRedis, keys: Keys, owner: str, **kw: Any) -> DeployLock:
    return DeployLock(redis, keys, events_max=1000, owner=owner, **kw)


def count_pubsubs(redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The pub/sub objects ``redis`` hands out from now on (one connection each)."""
    made: list[Any] = []
    original = redis.pubsub

    def pubsub(**kw: Any) -> Any:
        made.append(original(**kw))
        return made[-1]

    monkeypatch.setattr(redis, "pubsub", pubsub)
    return made


async def subscribers(redis: fakeredis.FakeAsyncRedis, channel: str) -> int:
    """How many connections are subscribed to ``channel`` now."""
    return int((await redis.pubsub_numsub(channel))[0][1])


async def in_line(redis: fakeredis.FakeAsyncRedis, keys: Keys, service: str) -> None:
    with anyio.fail_after(5):
        while not await redis.hlen(keys.lock_waiters(service)):  # noqa: ASYNC110 - Redis state
            await anyio.sleep(0.001)


async def test_holding_inside_running_starts_no_task_and_is_renewed_by_the_shared_one(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=150)
    async with locks.running():
        assert locks.serving
        tasks_before = len(anyio.get_running_tasks())
        async with locks.holding("web", task="deploy", cancel_on_loss=True) as lease:
            assert len(anyio.get_running_tasks()) == tasks_before
            await anyio.sleep(0.4)  # well past the TTL: only renewals keep it
            assert lease.still_held()
            assert (await locks.holder("web")).token == lease.token  # type: ignore[union-attr]
    assert not locks.serving
    assert lease.released
    assert await redis.exists(keys.lock("web")) == 0


async def test_running_twice_at_once_is_refused(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer")
    async with locks.running():
        with pytest.raises(LockError, match="already running"):
            async with locks.running():
                pass
        assert locks.serving
    assert not locks.serving


async def test_holding_outside_running_brings_a_watchdog_task_of_its_own(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=150)
    tasks_before = len(anyio.get_running_tasks())
    async with locks.holding("web") as lease:
        assert len(anyio.get_running_tasks()) == tasks_before + 1
        await anyio.sleep(0.4)
        assert lease.still_held()
    assert len(anyio.get_running_tasks()) == tasks_before


async def test_inside_running_a_lost_lock_cancels_only_the_block_that_held_it(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=150)
    ended: dict[str, str] = {}

    async def deploy(service: str, stolen: bool) -> None:
        try:
            async with locks.holding(service, cancel_on_loss=True):
                if stolen:
                    await redis.delete(keys.lock(service))  # taken away
                await anyio.sleep(0.5)
            ended[service] = "finished"
        except LockLostError:
            ended[service] = "lost"

    async with locks.running():
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(deploy, "web", True)
                tg.start_soon(deploy, "api", False)
        assert locks.serving  # the shared watchdog outlives a lost lock
    assert ended == {"web": "lost", "api": "finished"}


async def test_a_reentrant_hold_inside_running_is_released_once_by_the_outer_one(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=150)
    async with locks.running():
        async with locks.holding("web") as outer:
            async with locks.holding("web") as inner:
                assert inner is outer
                assert outer.depth == 2
            assert outer.still_held()
            await anyio.sleep(0.3)
            assert outer.still_held()  # still renewed after the inner block ended
        assert outer.released
    assert await redis.exists(keys.lock("web")) == 0


async def test_waits_inside_running_keep_one_pubsub_connection_across_services(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = count_pubsubs(redis, monkeypatch)
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter", poll_max_s=30)
    fences: list[int] = []

    async def wait(service: str) -> None:
        lease = await waiter.lock(service, timeout_s=10)
        fences.append(lease.fence)
        await waiter.release(lease)

    async with waiter.running():
        for service in ("web", "api", "web"):
            held = await holder.lock(service)
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, service)
                await in_line(redis, keys, service)
                await holder.release(held)  # handed straight to the waiter
    assert fences == [2, 2, 4]
    assert len(made) == 1


async def test_waits_outside_running_reuse_one_pubsub_connection_until_aclose(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = count_pubsubs(redis, monkeypatch)
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter", poll_max_s=30)
    channel = keys.lock_channel("web")
    subscribed_while_held: list[int] = []

    async def wait() -> None:
        lease = await waiter.lock("web", timeout_s=10)
        subscribed_while_held.append(await subscribers(redis, channel))
        await waiter.release(lease)  # also unsubscribes the wait's connection

    for _ in range(3):
        held = await holder.lock("web")
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await in_line(redis, keys, "web")
            await holder.release(held)
        assert await subscribers(redis, channel) == 0
    assert len(made) == 1
    assert subscribed_while_held == [1, 1, 1]  # tidied by the release, not before
    assert made[0].connection is not None
    await waiter.aclose()
    assert made[0].connection is None


async def test_a_wait_reuses_a_connection_still_subscribed_for_an_earlier_wait(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = count_pubsubs(redis, monkeypatch)
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter", poll_max_s=30)
    won = []

    async def wait(service: str) -> None:
        won.append(await waiter.lock(service, timeout_s=10))

    for service in ("web", "api"):  # the web lease stays held: nothing tidied between
        held = await holder.lock(service)
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, service)
            await in_line(redis, keys, service)
            await holder.release(held)
    assert len(made) == 1
    assert await subscribers(redis, keys.lock_channel("web")) == 0  # left for the api wait
    assert await subscribers(redis, keys.lock_channel("api")) == 1
    async with waiter.running():  # tidies what waits before it left subscribed
        with anyio.fail_after(5):
            while await subscribers(redis, keys.lock_channel("api")):  # noqa: ASYNC110 - server state
                await anyio.sleep(0.001)
        for lease in won:
            assert await waiter.release(lease) is True
    assert made[0].connection is None  # closed when running() ended


async def test_a_wait_cancelled_inside_running_leaves_the_line_and_its_connection_closed(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = count_pubsubs(redis, monkeypatch)
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter", poll_max_s=30)
    held = await holder.lock("web")

    async def wait() -> None:
        await waiter.release(await waiter.lock("web", timeout_s=10))

    async with waiter.running():
        with anyio.move_on_after(0.1):
            await waiter.lock("web")
        assert await redis.hlen(keys.lock_waiters("web")) == 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)  # a new connection: the cancelled one was not kept
            await in_line(redis, keys, "web")
            await holder.release(held)
    assert len(made) == 2
    assert await redis.exists(keys.lock("web")) == 0
