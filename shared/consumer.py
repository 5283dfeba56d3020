"""A pool of slots consuming one reliable queue: claim, run, drain, requeue.

Both stages use it: the uploader's ingest loop (``{ns}:ingest``) and the deployer
(``{ns}:queue``). Each slot owns one blocking connection, so a claim is one
BLMOVE that returns the moment an id is pushed: no polling anywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.jobs import JobStore, Status
from shared.keys import Keys
from shared.queue import Queue
from shared.workers import HEARTBEAT_INTERVAL_S, Registry

log = structlog.get_logger("consumer")

CLAIM_TIMEOUT_S = 5.0
ERROR_BACKOFF_S = 1.0

Handler = Callable[[str], Awaitable[object]]


class Consumer:
    """Runs ``handler(job_id)`` for ids claimed from ``source`` on ``slots`` slots.

    ``handler`` must end each job with a transition that acks it from
    :attr:`active_key`. On stop, claiming stops at once, running jobs get
    ``grace_period_s`` to finish, then are cancelled; whatever is still in the
    active list goes back to the head of ``source`` with status ``requeue_status``.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        store: JobStore,
        *,
        source: str,
        kind: str,
        worker_id: str,
        slots: int,
        handler: Handler,
        blocking_redis: Callable[[], Redis],
        requeue_status: Status,
        grace_period_s: float = 25.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.source = source
        self.kind = kind
        self.worker_id = worker_id
        self.slots = slots
        self.handler = handler
        self.blocking_redis = blocking_redis
        self.requeue_status = requeue_status
        self.grace_period_s = grace_period_s
        self.active_key = keys.active(worker_id)
        self.registry = Registry(redis, keys, worker_id, kind=kind, slots=slots, queue=source)
        self.log = log.bind(stage=kind)
        self.busy = 0
        self._drained: anyio.Event | None = None
        self._claiming: set[anyio.CancelScope] = set()
        self._running: set[anyio.CancelScope] = set()

    async def run(self, stopping: anyio.Event) -> None:
        """Work until ``stopping`` is set, then drain within the grace period."""
        await self.registry.beat(0)
        self.log.info("consumer.started", worker=self.worker_id, slots=self.slots)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat)
                async with anyio.create_task_group() as slots:
                    slots.start_soon(self._stop_when, stopping)
                    for index in range(self.slots):
                        slots.start_soon(self._slot, index, stopping)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._requeue_leftovers()
                try:
                    await self.registry.unregister()
                except RedisError as exc:
                    self.log.warning("consumer.unregister_failed", error=str(exc))
            self.log.info("consumer.stopped", worker=self.worker_id)

    async def _stop_when(self, stopping: anyio.Event) -> None:
        await stopping.wait()
        for scope in list(self._claiming):
            scope.cancel()
        if self._running:
            self.log.info("consumer.draining", jobs=len(self._running), grace_s=self.grace_period_s)
            self._drained = anyio.Event()
            with anyio.move_on_after(self.grace_period_s):
                await self._drained.wait()
            for scope in list(self._running):
                scope.cancel()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.registry.beat(self.busy)
            except RedisError as exc:
                self.log.warning("consumer.heartbeat_failed", error=str(exc))
            await anyio.sleep(HEARTBEAT_INTERVAL_S)

    async def _slot(self, index: int, stopping: anyio.Event) -> None:
        conn = self.blocking_redis()
        queue = Queue(conn, self.source, self.active_key)
        try:
            while not stopping.is_set():
                job_id: str | None = None
                with anyio.CancelScope() as claim:
                    self._claiming.add(claim)
                    try:
                        job_id = await queue.claim(CLAIM_TIMEOUT_S)
                    except RedisError as exc:
                        self.log.warning("consumer.claim_failed", slot=index, error=str(exc))
                        await anyio.sleep(ERROR_BACKOFF_S)
                    finally:
                        self._claiming.discard(claim)
                if job_id is not None:
                    await self._run_one(job_id)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    async def _run_one(self, job_id: str) -> None:
        self.busy += 1
        with anyio.CancelScope() as running:
            self._running.add(running)
            try:
                await self.handler(job_id)
            except RedisError as exc:
                # The id stays in the active list: requeued at shutdown, or by
                # orphan recovery if this process dies.
                self.log.error("consumer.job_error", job_id=job_id, error=str(exc))
                await anyio.sleep(ERROR_BACKOFF_S)
            finally:
                self._running.discard(running)
                self.busy -= 1
                if self._drained is not None and not self._running:
                    self._drained.set()

    async def _requeue_leftovers(self) -> None:
        """Put ids still in the active list back at the head, oldest claimed next."""
        try:
            leftovers: Any = await self.redis.lrange(self.active_key, 0, -1)
            for job_id in leftovers:  # newest first, so the oldest ends up next in line
                await self.store.transition(
                    job_id, self.requeue_status, ack=self.active_key, push=self.source, head=True
                )
                self.log.info("consumer.requeued", job_id=job_id)
        except RedisError as exc:
            self.log.error("consumer.requeue_failed", error=str(exc), active=self.active_key)
