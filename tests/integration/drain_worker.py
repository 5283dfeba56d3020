"""A queue consumer process for the exactly-once test: N consumers, one Queue each.

Usage: python -m tests.integration.drain_worker REDIS_URL SOURCE ACTIVE CONSUMERS OUT
Each consumer connects, then the process writes OUT.ready; each claims through
shared.engine.queue.Queue (BLMOVE into ACTIVE), records the id, then acks. The process
exits once the source has stayed empty for one idle timeout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from shared.core.settings import load_settings
from shared.engine.queue import Queue
from shared.redis.client import make_redis

IDLE_TIMEOUT_S = 3.0


@dataclass
class Run:
    """What one process's consumers share."""

    url: str
    source: str
    active: str
    consumers: int
    seen: list[str] = field(default_factory=list)
    connected: int = 0
    all_connected: anyio.Event = field(default_factory=anyio.Event)


async def consume(run: Run) -> None:
    redis = make_redis(load_settings({}, redis_url=run.url), blocking=True)
    queue = Queue(redis, run.source, run.active)
    try:
        await redis.ping()
        run.connected += 1
        if run.connected == run.consumers:
            run.all_connected.set()
        while (job_id := await queue.take(IDLE_TIMEOUT_S)) is not None:
            run.seen.append(job_id)
            await queue.ack(job_id)
    finally:
        await redis.aclose()


async def main(run: Run, out: Path) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(run.consumers):
            tg.start_soon(consume, run)
        await run.all_connected.wait()
        await anyio.Path(f"{out}.ready").touch()
    await anyio.Path(out).write_text("\n".join(run.seen))


if __name__ == "__main__":
    url, source, active, consumers, out = sys.argv[1:6]

    async def entry() -> None:
        await main(Run(url, source, active, int(consumers)), Path(out))

    anyio.run(entry)
