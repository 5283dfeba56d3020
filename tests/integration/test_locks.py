"""Deploy locks and staging claims on a real valkey-server, across real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from shared.coord.lockbook import LockBook
from shared.coord.locks import DeployLock, LockTimeoutError
from shared.coord.sites import Sites, Verdict
from shared.coord.staging import Staging
from shared.core.settings import Settings
from shared.redis.client import make_redis
from shared.redis.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PROCESSES = 8
ACQUISITIONS = 200


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


def spawn_worker(*args: str | int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.lock_worker", *map(str, args)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_counters(bq_settings: Settings, folder: Path, n: int, locked: bool) -> list[dict[str, int]]:
    (folder / "counter").write_text("0")
    procs = [
        spawn_worker("count", bq_settings.redis_url, bq_settings.namespace, folder, n, int(locked))
        for _ in range(PROCESSES)
    ]
    try:
        time.sleep(1.0)  # let every process import and connect before the start line
        (folder / "go").touch()
        for proc in procs:
            assert proc.wait(timeout=240) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads(p.read_text()) for p in sorted(folder.glob("result-*.json"))]


def test_mutual_exclusion_8_processes_x_200_acquisitions_no_violation(
    bq_settings: Settings, tmp_path: Path
) -> None:
    results = run_counters(bq_settings, tmp_path, ACQUISITIONS, locked=True)

    assert len(results) == PROCESSES
    assert [r["done"] for r in results] == [ACQUISITIONS] * PROCESSES
    assert sum(r["violations"] for r in results) == 0
    assert int((tmp_path / "counter").read_text()) == PROCESSES * ACQUISITIONS


def test_same_counter_without_the_lock_does_lose_updates(
    bq_settings: Settings, tmp_path: Path
) -> None:
    """The harness can see a violation: without the lock, updates are lost."""
    results = run_counters(bq_settings, tmp_path, 50, locked=False)

    overlaps = sum(r["violations"] for r in results)
    lost = PROCESSES * 50 - int((tmp_path / "counter").read_text() or 0)
    assert overlaps + lost > 0


async def test_paused_holder_is_fenced_off_and_knows_it_lost_the_lock(
    bq_settings: Settings, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    holder = spawn_worker("hold", bq_settings.redis_url, bq_settings.namespace, tmp_path, 500)
    try:
        with anyio.fail_after(30):
            while not await anyio.Path(tmp_path / "acquired").exists():  # noqa: ASYNC110 - another process's file
                await anyio.sleep(0.01)
        first_fence = int((tmp_path / "acquired").read_text())
        os.kill(holder.pid, signal.SIGSTOP)  # a GC pause, a frozen VM, a stuck disk
        paused_at = time.monotonic()

        second = DeployLock(redis, keys, events_max=1000, owner="second", ttl_ms=30_000)
        lease = await second.lock("web", timeout_s=5)
        took_over_after_s = time.monotonic() - paused_at
        sites = Sites(redis, keys, events_max=1000)
        mine = await sites.promote("web", "job-b", 5, fence=lease.fence)
        await anyio.sleep(max(0.0, 1.0 - (time.monotonic() - paused_at)))
        os.kill(holder.pid, signal.SIGCONT)
        (tmp_path / "resume").touch()
        assert await anyio.to_thread.run_sync(holder.wait, 30) == 0
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()
    result = json.loads((tmp_path / "result.json").read_text())

    assert 0.3 < took_over_after_s < 3.0  # at the 500 ms TTL, far from the 5 s bound
    assert lease.fence == first_fence + 1
    assert mine.outcome is Verdict.PROMOTED
    # The first holder's higher seq (10 > 5) would have won: only the fence stops it.
    assert result["promotion"] == Verdict.FENCED.value
    assert result["still_held_on_resume"] is False
    assert result["still_held_later"] is False
    assert result["lost"] is True
    assert (await sites.live("web"))["id"] == "job-b"
    # The first holder's watchdog and release left the second holder's lock alone.
    assert (await second.holder("web")).owner == "second"  # type: ignore[union-attr]
    assert lease.still_held()
    assert await second.release(lease) is True


async def test_release_wakes_a_blocked_waiter_at_once_not_at_the_poll_bound(
    redis: Redis, keys: Keys
) -> None:
    first = DeployLock(redis, keys, events_max=1000, owner="first", poll_max_s=30)
    second = DeployLock(redis, keys, events_max=1000, owner="second", poll_max_s=30)
    held = await first.lock("web")
    got: list[float] = []

    async def wait() -> None:
        lease = await second.lock("web", timeout_s=20)
        got.append(time.monotonic())
        await second.release(lease)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.2)  # the waiter is subscribed and in line
        released_at = time.monotonic()
        assert await first.release(held) is True
    # Woken by the release itself: far below the 30 s poll bound (loose for noisy CI).
    assert got[0] - released_at < 1.0


async def test_crashed_holder_lock_expires_and_the_waiter_takes_it_at_its_ttl(
    redis: Redis, keys: Keys
) -> None:
    crashed = DeployLock(redis, keys, events_max=1000, owner="crashed", ttl_ms=400)
    waiter = DeployLock(redis, keys, events_max=1000, owner="waiter", poll_max_s=30)
    await crashed.lock("web")  # never released nor renewed: no publish will come
    started = time.monotonic()

    lease = await waiter.lock("web", timeout_s=10)

    assert 0.3 < time.monotonic() - started < 3.0  # at the 400 ms TTL, not the 30 s bound
    last = await waiter.last_holder("web")
    assert last is not None
    assert (last.owner, last.end) == ("crashed", "expired")
    await waiter.release(lease)


async def test_lock_times_out_naming_the_holder(redis: Redis, keys: Keys) -> None:
    book = LockBook(redis, keys, events_max=1000)
    await book.acquire_manual("web", owner="alice", ttl_ms=60_000, reason="release freeze")
    deployer = DeployLock(redis, keys, events_max=1000, owner="deployer")
    started = time.monotonic()

    with pytest.raises(LockTimeoutError) as caught:
        await deployer.lock("web", timeout_s=0.3)

    assert 0.25 < time.monotonic() - started < 2
    assert caught.value.holder is not None
    assert (caught.value.holder.owner, caught.value.holder.reason) == ("alice", "release freeze")
    assert await redis.hlen(keys.lock_waiters("web")) == 0  # left the line


async def test_multi_lock_takes_none_when_one_of_three_is_held(redis: Redis, keys: Keys) -> None:
    other = DeployLock(redis, keys, events_max=1000, owner="other")
    mine = DeployLock(redis, keys, events_max=1000, owner="mine")
    held = await other.lock("b")

    assert await mine.try_lock_many(["a", "b", "c"]) is None
    assert await redis.exists(keys.lock("a"), keys.lock("c")) == 0
    assert await mine.fence("a") == 0

    await other.release(held)
    lease = await mine.try_lock_many(["a", "b", "c"])
    assert lease is not None
    assert lease.fences == {"a": 1, "b": 2, "c": 1}
    assert await mine.release(lease) is True


async def test_manual_lock_expires_after_its_ttl(redis: Redis, keys: Keys) -> None:
    book = LockBook(redis, keys, events_max=1000)
    taken, _ = await book.acquire_manual("web", owner="alice", ttl_ms=300)
    assert taken
    await anyio.sleep(0.45)

    assert await book.holder("web") is None
    last = await book.last_holder("web")
    assert last is not None
    assert (last.owner, last.end) == ("alice", "expired")
    assert (await book.acquire_manual("web", owner="bob", ttl_ms=60_000))[0]


async def test_fifty_concurrent_claims_of_one_environment_have_one_winner(
    bq_settings: Settings, keys: Keys
) -> None:
    clients = [make_redis(bq_settings) for _ in range(50)]
    won: list[str] = []
    try:
        for c in clients:
            await c.ping()  # connected before the race starts
        start = anyio.Event()

        async def claim(index: int, client: Redis) -> None:
            staging = Staging(client, keys, events_max=1000)
            await start.wait()
            ok, _ = await staging.claim("staging", owner=f"user{index}", branch="main")
            if ok:
                won.append(f"user{index}")

        async with anyio.create_task_group() as tg:
            for index, client in enumerate(clients):
                tg.start_soon(claim, index, client)
            await anyio.sleep(0.05)
            start.set()
        current = await Staging(clients[0], keys, events_max=1000).get("staging")
        events = await clients[0].xrange(keys.events)
    finally:
        for c in clients:
            await c.aclose()

    assert len(won) == 1
    assert current is not None
    assert current.owner == won[0]
    assert [e for _, e in events if e["kind"] == "claim"] == [
        {"kind": "claim", "action": "claimed", "env": "staging", "owner": won[0], "at": e["at"]}
        for _, e in events
        if e["kind"] == "claim"
    ]
    assert sum(1 for _, e in events if e["kind"] == "claim") == 1
