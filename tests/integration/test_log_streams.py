"""Build-log streams (SSE) share one Redis reader per uploader: hundreds of idle
followers do not mean hundreds of Redis clients; past the cap new ones get 503; a
stream ends when its job has ended, whatever cursor it resumes from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from tests.integration.helpers import Stack, make_repo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FOLLOWERS = 300
POOL = 8  # BUILDQ_REDIS_MAX_CONNECTIONS of the uploader
SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def paused(
    bq_env: dict[str, str], tmp_path: Path, s3_client: object
) -> Iterator[tuple[Stack, str]]:
    """A stack with one job held in the queue (the fleet is paused)."""
    (tmp_path / "logs").mkdir()
    stack = Stack(
        {
            **bq_env,
            "BUILDQ_MAX_LOG_STREAMS": str(FOLLOWERS),
            "BUILDQ_REDIS_MAX_CONNECTIONS": str(POOL),
        },
        tmp_path / "logs",
    )
    stack.start(deployers=1, slots=1)
    try:
        assert httpx.put(f"{stack.url}/fleet", json={"paused": True}).status_code == 200
        repo = make_repo(tmp_path / "held", {"index.html": "held"})
        yield stack, stack.deploy(repo, service="held")
    finally:
        stack.stop()


def redis_clients(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.env["BUILDQ_REDIS_URL"])
    try:
        return int(client.info("clients")["connected_clients"])
    finally:
        client.close()


async def _hold_streams(
    url: str, count: int, opened: list[int], all_open: anyio.Event, release: anyio.Event
) -> None:
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one() -> None:
            async with client.stream("GET", url, headers=SSE) as response:
                opened.append(response.status_code)
                if len(opened) == count:
                    all_open.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)


def test_idle_followers_share_one_redis_reader(paused: tuple[Stack, str]) -> None:
    stack, job_id = paused
    url = f"{stack.url}/deployments/{job_id}/logs"
    before = redis_clients(stack)
    counted: list[int] = []

    async def scenario() -> None:
        opened: list[int] = []
        all_open, release = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_hold_streams, url, FOLLOWERS, opened, all_open, release)
            with anyio.fail_after(60):
                await all_open.wait()
            await anyio.sleep(0.5)  # let every stream reach its first wait
            counted.append(await anyio.to_thread.run_sync(redis_clients, stack))
            # One more than the cap allows is refused at once, not queued.
            async with httpx.AsyncClient(timeout=30) as client:
                counted.append((await client.get(url, headers=SSE)).status_code)
            release.set()
        assert opened == [200] * FOLLOWERS

    anyio.run(scenario)
    during, refused = counted
    # At most the pool and the hub's one reader, however many streams are open.
    assert during - before <= POOL + 1, f"{during - before} more Redis clients for {FOLLOWERS}"
    assert refused == 503


def test_a_stream_of_an_ended_job_ends_even_from_a_cursor_past_its_end(
    stack: Stack, tmp_path: Path
) -> None:
    job_id = stack.deploy(make_repo(tmp_path / "done", {"index.html": "x"}), service="done")
    assert stack.wait(job_id)["status"] == "live"
    url = f"{stack.url}/deployments/{job_id}/logs"

    far_future = httpx.get(url, headers={**SSE, "Last-Event-ID": "99999999999999-0"}, timeout=30)
    whole = httpx.get(url, headers=SSE, timeout=30)

    assert far_future.status_code == 200
    assert "event: line" not in far_future.text
    assert whole.text.rstrip().endswith('"status": "live"}')
    assert "event: end" in whole.text
