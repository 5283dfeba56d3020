"""A queue consumer process for the exactly-once test: N consumers, one Queue each.

Usage: python -m tests.integration.drain_worker REDIS_URL SOURCE ACTIVE CONSUMERS OUT
Each consumer claims through shared.queue.Queue (BLMOVE into ACTIVE), records the
id, then acks. It exits when the source stays empty for one claim timeout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from shared.queue import Queue
from shared.redis_client import make_redis
from shared.settings import load_settings


async def consume(url: str, source: str, active: str, seen: list[str]) -> None:
    redis = make_redis(load_settings({}, redis_url=url), blocking=True)
    queue = Queue(redis, source, active)
    try:
        while (job_id := await queue.claim(0.5)) is not None:
            seen.append(job_id)
            await queue.ack(job_id)
    finally:
        await redis.aclose()


async def main(url: str, source: str, active: str, consumers: int, out: Path) -> None:
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consume, url, source, active, seen)
    await anyio.Path(out).write_text("\n".join(seen))


if __name__ == "__main__":
    url, source, active, consumers, out = sys.argv[1:6]
    anyio.run(main, url, source, active, int(consumers), Path(out))
