"""A worker process for the exactly-once test: buildq's own Consumer on the ingest stage.

Usage: python -m tests.integration.drain_worker REDIS_URL NAMESPACE SLOTS OUT
Runs ``shared.engine.consumer.Consumer`` (take.lua while the queue has work, BLMOVE
when it is empty) with SLOTS slots and a handler that records each job id it runs and
ends the job ``live``. The process stops once it has run at least one job and the
queue has stayed empty with no job running for IDLE_S, then writes the ids to OUT.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

from shared.core.settings import load_settings
from shared.engine.consumer import Consumer
from shared.engine.jobs import JobRecord, Status
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome
from shared.engine.stages import INGEST
from shared.redis.client import make_redis
from shared.redis.keys import Keys

IDLE_S = 2.0
LIMIT_S = 90.0


async def main(url: str, namespace: str, slots: int, out: Path) -> None:
    settings = load_settings({}, redis_url=url, namespace=namespace)
    keys = Keys(namespace)
    redis = make_redis(settings)
    seen: list[str] = []
    last = time.monotonic()

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        nonlocal last
        seen.append(record.id)
        last = time.monotonic()
        return Outcome(Status.LIVE)

    consumer = Consumer(
        redis,
        keys,
        settings,
        stage=INGEST,
        worker_id=INGEST.new_worker_id(),
        slots=slots,
        handler=handler,
        blocking_redis=lambda: make_redis(settings, blocking=True),
    )
    stopping = anyio.Event()

    async def stop_when_drained() -> None:
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            await anyio.sleep(0.1)
            idle = time.monotonic() - last > IDLE_S and consumer.busy == 0
            if seen and idle and await redis.llen(keys.ingest) == 0:
                break
        stopping.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_drained)
        await consumer.run(stopping)
    await redis.aclose()
    await anyio.Path(out).write_text("\n".join(seen))


if __name__ == "__main__":
    url, namespace, slots, out = sys.argv[1:5]
    anyio.run(main, url, namespace, int(slots), Path(out))
