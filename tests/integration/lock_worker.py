"""A lock-holding process for the lock tests.

python -m tests.integration.lock_worker count URL NAMESPACE DIR N LOCKED
    waits for DIR/go, then N times: lock "counter" (if LOCKED is 1), read DIR/counter,
    pause, write it back plus one, unlock. Overlaps are seen through an O_EXCL
    marker file. Writes DIR/result-<pid>.json: {"done", "violations"}.
python -m tests.integration.lock_worker hold URL NAMESPACE DIR TTL_MS
    holds lock "web" (watchdog on), writes DIR/acquired with its fence, waits for
    DIR/resume, then reports still_held() and its own promotion's outcome.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio

from shared.coord.locks import DeployLock, Lease
from shared.coord.sites import Sites
from shared.core.settings import load_settings
from shared.redis.client import make_redis
from shared.redis.keys import Keys

CRITICAL_SECTION_S = 0.0003


async def wait_for(path: Path) -> None:
    # A test helper may poll another process's file; buildq itself never polls.
    while not await anyio.Path(path).exists():  # noqa: ASYNC110 - see above
        await anyio.sleep(0.005)


def critical_section(folder: Path) -> int:
    """Read-modify-write the counter file; returns 1 if another process was inside."""
    marker = folder / "inside"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        fd = None
    counter = folder / "counter"
    value = int(counter.read_text() or 0)
    time.sleep(CRITICAL_SECTION_S)  # widen the race window a real overlap would hit
    counter.write_text(str(value + 1))
    if fd is None:
        return 1
    os.close(fd)
    marker.unlink()
    return 0


async def count(url: str, namespace: str, folder: Path, n: int, locked: bool) -> None:
    settings = load_settings({}, redis_url=url, namespace=namespace)
    redis = make_redis(settings)
    locks = DeployLock(
        redis, Keys(namespace), events_max=10_000, owner=f"w{os.getpid()}", ttl_ms=10_000
    )
    done = violations = 0
    await wait_for(folder / "go")
    try:
        for _ in range(n):
            lease: Lease | None = await locks.lock("counter") if locked else None
            try:
                violations += critical_section(folder)
            finally:
                if lease is not None:
                    await locks.release(lease)
            done += 1
    finally:
        await redis.aclose()
    result = {"done": done, "violations": violations}
    (folder / f"result-{os.getpid()}.json").write_text(json.dumps(result))


async def hold(url: str, namespace: str, folder: Path, ttl_ms: int) -> None:
    settings = load_settings({}, redis_url=url, namespace=namespace)
    redis = make_redis(settings)
    keys = Keys(namespace)
    locks = DeployLock(redis, keys, events_max=10_000, owner="first", ttl_ms=ttl_ms)
    sites = Sites(redis, keys, events_max=10_000)
    try:
        async with locks.holding("web", task="deploy job-a") as lease:
            (folder / "acquired").write_text(str(lease.fence))
            await wait_for(folder / "resume")
            held_on_resume = lease.still_held()
            promotion = await sites.promote("web", "job-a", 10, fence=lease.fence)
            await anyio.sleep(ttl_ms / 1000)  # one watchdog tick after the pause
            result = {
                "fence": lease.fence,
                "still_held_on_resume": held_on_resume,
                "still_held_later": lease.still_held(),
                "lost": lease.lost.is_set(),
                "promotion": promotion.outcome.value,
            }
        result["released"] = lease.released
        (folder / "result.json").write_text(json.dumps(result))
    finally:
        await redis.aclose()


def main(argv: list[str]) -> None:
    mode, url, namespace, folder = argv[0], argv[1], argv[2], Path(argv[3])
    if mode == "count":
        anyio.run(count, url, namespace, folder, int(argv[4]), argv[5] == "1")
    else:
        anyio.run(hold, url, namespace, folder, int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
