"""The systems under test, each behind one small interface: producer, worker, probe.

Every worker runs in this process on its own connections; the producer never shares a
connection with the worker. Handlers are no-ops that report to a :class:`Probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import anyio
from redis.asyncio import Redis

from shared.core.settings import load_settings
from shared.engine.consumer import Consumer
from shared.engine.jobs import JobRecord, JobStore, Status, new_job_id
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome
from shared.engine.stages import BUILD
from shared.engine.workers import new_worker_id
from shared.redis.client import make_redis
from shared.redis.keys import Keys


class Probe:
    """What a no-op handler reports: when it started, and when its job ended."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.finished = 0
        self.started_at = 0.0
        self.done = asyncio.Event()
        self.job_ended = asyncio.Event()

    def start(self) -> None:
        self.started_at = time.perf_counter()

    def finish(self) -> None:
        self.finished += 1
        self.job_ended.set()
        if self.finished >= self.target:
            self.done.set()


class System:
    """One queue library: a producer connection and a worker with ``concurrency`` slots."""

    label = "?"
    note = ""
    arrival_jitter_s = 0.002  # random idle gap before each pickup sample
    pickup_samples: int | None = None  # None: the command-line default

    async def open(self) -> None:
        """Connect the producer (it never shares a connection with the worker)."""

    async def prepare_one(self) -> None:
        """Untimed work before an enqueue (buildq: the accept stage creates the record)."""

    async def enqueue(self) -> None:
        raise NotImplementedError

    async def start_worker(self, probe: Probe) -> None:
        raise NotImplementedError

    async def stop_worker(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close the producer."""


class Floor(System):
    """Bare LPUSH -> BRPOP on dedicated connections: no records, no bookkeeping."""

    label = "floor (LPUSH/BRPOP)"
    note = "one BRPOP per job, nothing else: the redis-py/asyncio ceiling"

    def __init__(self, url: str, token: str, concurrency: int) -> None:
        self.url = url
        self.key = f"bench-{token}:floor"
        self.concurrency = concurrency
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self.producer = Redis.from_url(self.url)

    async def enqueue(self) -> None:
        await self.producer.lpush(self.key, b"x")

    async def start_worker(self, probe: Probe) -> None:
        async def slot() -> None:
            conn = Redis.from_url(self.url, single_connection_client=True)
            try:
                while True:
                    if await conn.brpop([self.key], timeout=5):
                        probe.start()
                        probe.finish()
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.aclose()

        self.tasks = [asyncio.create_task(slot()) for _ in range(self.concurrency)]

    async def stop_worker(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.producer.aclose()


class Buildq(System):
    """The deployer's path: shared.engine.consumer.Consumer as deployer/worker.py sets it
    up (obeying the fleet switches, with an end hook), its take and final transitions."""

    label = "buildq"
    note = (
        "Consumer slots as the deployer runs them (fleet gate, end hook): the final "
        "transition (LIVE, ack) takes and starts the next job in the same take.lua call "
        "while the queue has work, else BLMOVE with take.lua pipelined behind it; "
        "enqueue = submit + QUEUED(push)"
    )

    def __init__(self, url: str, token: str, concurrency: int) -> None:
        self.settings = load_settings(environ={}, redis_url=url, namespace=f"bench-{token}")
        self.keys = Keys(self.settings.namespace)
        self.concurrency = concurrency
        self.job_id = ""

    async def open(self) -> None:
        self.producer = make_redis(self.settings)
        self.producer_store = JobStore(self.producer, self.keys, self.settings)

    async def prepare_one(self) -> None:
        self.job_id = new_job_id()
        await self.producer_store.submit(
            self.job_id, service="bench", repo_url="https://example.invalid/bench.git"
        )

    async def enqueue(self) -> None:
        # What the ingest stage does once the source is uploaded: onto the build queue.
        await self.producer_store.transition(
            self.job_id, Status.QUEUED, ack=self.keys.ingest, push=self.keys.queue
        )

    async def start_worker(self, probe: Probe) -> None:
        self.worker_redis = make_redis(self.settings)
        worker_id = new_worker_id("bench")

        async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
            # The consumer has taken and started the job and decoded its record; it
            # acks with the LIVE transition after this returns.
            probe.start()
            probe.finish()
            return Outcome(Status.LIVE)

        async def on_end(raw: dict[str, str]) -> None:
            # The deployer's end hook (JobRunner.save_record) decodes the final record
            # and PUTs it to S3; the PUT is storage, not the queue, and is left out.
            JobRecord.from_hash(raw).model_dump(mode="json")

        consumer = Consumer(
            self.worker_redis,
            self.keys,
            self.settings,
            stage=BUILD,
            worker_id=worker_id,
            slots=self.concurrency,
            handler=handler,
            blocking_redis=lambda: make_redis(self.settings, blocking=True),
            obey_fleet=True,
            on_end=on_end,
        )
        self.stopping = anyio.Event()
        self.task = asyncio.create_task(consumer.run(self.stopping))

    async def stop_worker(self) -> None:
        self.stopping.set()
        try:
            await asyncio.wait_for(self.task, 15)
        finally:
            await self.worker_redis.aclose()

    async def close(self) -> None:
        await self.producer.aclose()


class Saq(System):
    """SAQ's Redis queue: BLMOVE per worker task; job body is one JSON string key."""

    label = "saq"
    note = "concurrency slots, BLMOVE, dequeue_timeout=0 (blocks); upkeep polls 1 s"

    def __init__(self, url: str, token: str, concurrency: int) -> None:
        self.url = url
        self.name = f"bench-{token}"
        self.concurrency = concurrency

    async def open(self) -> None:
        from saq import Queue

        self.producer = Queue.from_url(self.url, name=self.name)

    async def enqueue(self) -> None:
        await self.producer.enqueue("noop")

    async def start_worker(self, probe: Probe) -> None:
        from saq import Queue, Worker

        async def noop(ctx: Any) -> None:
            probe.start()

        async def after(ctx: Any) -> None:
            probe.finish()

        self.queue = Queue.from_url(self.url, name=self.name)
        self.worker = Worker(
            self.queue,
            functions=[("noop", noop)],
            concurrency=self.concurrency,
            after_process=after,
        )
        self.worker.SIGNALS = []  # the benchmark owns SIGINT/SIGTERM
        self.task = asyncio.create_task(self.worker.start())

    async def stop_worker(self) -> None:
        await self.worker.stop()
        try:
            await asyncio.wait_for(self.task, 15)
        finally:
            await self.queue.disconnect()

    async def close(self) -> None:
        await self.producer.disconnect()


class Arq(System):
    """arq: a sorted-set queue that the worker polls every ``poll_delay`` seconds."""

    def __init__(
        self, port: int, token: str, concurrency: int, poll_delay_s: float, *, samples: int
    ) -> None:
        from arq.connections import RedisSettings

        self.redis_settings = RedisSettings(host="127.0.0.1", port=port)
        self.queue_name = f"bench-{token}:arq:{poll_delay_s:g}"
        self.concurrency = concurrency
        self.poll_delay_s = poll_delay_s
        self.label = f"arq poll={poll_delay_s:g}s"
        self.note = f"max_jobs slots, polls ZRANGEBYSCORE every {poll_delay_s:g} s"
        self.arrival_jitter_s = poll_delay_s  # arrivals uniform over the poll period
        self.pickup_samples = samples  # each sample waits ~poll_delay_s: fewer of them

    async def open(self) -> None:
        from arq.connections import create_pool

        self.producer = await create_pool(self.redis_settings, default_queue_name=self.queue_name)

    async def enqueue(self) -> None:
        await self.producer.enqueue_job("noop")

    async def start_worker(self, probe: Probe) -> None:
        from arq.worker import Worker, func

        async def noop(ctx: Any) -> None:
            probe.start()

        async def after(ctx: Any) -> None:
            probe.finish()

        self.worker = Worker(
            [func(noop, name="noop")],
            queue_name=self.queue_name,
            redis_settings=self.redis_settings,
            max_jobs=self.concurrency,
            poll_delay=self.poll_delay_s,
            handle_signals=False,
            after_job_end=after,
        )
        self.task = asyncio.create_task(self.worker.async_run())

    async def stop_worker(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.worker.close()

    async def close(self) -> None:
        await self.producer.aclose()
