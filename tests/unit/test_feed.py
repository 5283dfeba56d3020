"""``uploader/feed.py``: following ``{ns}:events`` from the uploaders' cursor, on
fakeredis: a restarted feed handles what happened while it was down, a first one
starts at the newest entry, a trimmed cursor is logged, a Redis error is retried;
and build durations (``uploader/durations.py``) are recorded for a job that went
live while no uploader ran."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from uploader.durations import record_durations
from uploader.feed import follow_feed
from uploader.loghub import LogHub, StreamEntry

pytestmark = pytest.mark.anyio
CURSOR = "test:cursor"


async def add(redis: fakeredis.FakeAsyncRedis, keys: Keys, n: int) -> list[str]:
    return [str(await redis.xadd(keys.events, {"kind": "test", "n": str(i)})) for i in range(n)]


async def handled_by_feed(
    hub: LogHub,
    redis: fakeredis.FakeAsyncRedis,
    want: int,
    handle: Callable[[StreamEntry], Awaitable[None]] | None = None,
    before: Callable[[], Awaitable[object]] | None = None,
) -> list[str]:
    """Run a feed until it has handled ``want`` entries (``before`` runs once the feed
    knows where it starts); the ids it handled, in order."""
    seen: list[str] = []
    enough = anyio.Event()

    async def record(entry: StreamEntry) -> None:
        if handle is not None:
            await handle(entry)
        seen.append(entry.id)
        if len(seen) >= want:
            enough.set()

    started = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: follow_feed(
                    hub, redis, name="test", cursor=CURSOR, handle=record, started=started
                )
            )
            await started.wait()
            if before is not None:
                await before()
            await enough.wait()
            await anyio.sleep(0.1)  # anything more would show up now
            tg.cancel_scope.cancel()
    return seen


async def test_a_first_feed_starts_at_the_newest_entry_and_keeps_its_place(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await add(redis, keys, 3)  # before any feed ran: not handled
    later: list[str] = []

    async def more() -> None:
        later.extend(await add(redis, keys, 2))

    assert await handled_by_feed(hub, redis, 2, before=more) == later
    assert await redis.get(CURSOR) == later[-1]


async def test_a_restarted_feed_handles_what_happened_while_it_was_down(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first: list[str] = []

    async def one() -> None:
        first.extend(await add(redis, keys, 1))

    assert await handled_by_feed(hub, redis, 1, before=one) == first
    missed = await add(redis, keys, 4)  # no feed runs now

    assert await handled_by_feed(hub, redis, 4) == missed
    assert await redis.get(CURSOR) == missed[-1]


async def test_a_cursor_the_stream_was_trimmed_past_is_logged(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    gone = await add(redis, keys, 3)
    await redis.set(CURSOR, gone[0])
    await redis.xtrim(keys.events, maxlen=1, approximate=False)
    with capture_logs() as logs:
        assert await handled_by_feed(hub, redis, 1) == gone[2:]
    trimmed = [e for e in logs if e["event"] == "feed.events_trimmed"]
    assert len(trimmed) == 1
    assert trimmed[0]["after"] == gone[0]


async def test_a_redis_error_in_a_handler_is_retried_from_the_last_place(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("uploader.feed.RETRY_S", 0.01)
    ids = await add(redis, keys, 2)
    await redis.set(CURSOR, "0-0")
    failures = [ids[1]]

    async def flaky(entry: StreamEntry) -> None:
        if entry.id in failures:
            failures.remove(entry.id)
            raise RedisConnectionError("connection lost")

    with capture_logs() as logs:
        # The first entry, the failure on the second, then both again from the start.
        seen = await handled_by_feed(hub, redis, 3, handle=flaky)
    assert seen == [ids[0], ids[0], ids[1]]
    assert [e["event"] for e in logs].count("feed.redis_error") == 1


async def test_a_job_that_went_live_while_no_uploader_ran_gets_its_build_duration(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: object
) -> None:
    async def run() -> None:
        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: record_durations(hub, store, ttl_s=60, started=started))
            await started.wait()
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()

    await run()  # a first uploader: the cursor starts here
    job = "d" * 20
    await store.submit(job, service="web", repo_url="https://example.com/web.git")
    for status in (Status.QUEUED, Status.BUILDING, Status.PUBLISHING):
        await store.transition(job, status)
        clock.advance(1.5)  # type: ignore[attr-defined]
    await store.transition(job, Status.LIVE)
    assert await redis.zcard(keys.durations("web")) == 0  # no uploader was running

    await run()
    assert await redis.zrange(keys.durations("web"), 0, -1) == [f"{job}:3000"]
