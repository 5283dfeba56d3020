"""A pool of slots consuming one reliable queue: take, run, retry, drain, recover.

Both stages use it: the uploader's ingest stage (``{ns}:ingest``) and the deployer
(``{ns}:queue``). A job costs one call for its queue bookkeeping while the queue has
work: the call that ends a job also takes and starts the next (``take.lua``), and
the slots' calls share writes on two connections (:mod:`shared.engine.batching`). A
slot with nothing in hand blocks in BLMOVE on its own connection with the start
pipelined behind it, so the handler starts the moment an id is pushed, with the
record in hand (see :mod:`shared.engine.queue`). Nothing polls.

The consumer owns a job's lifecycle around the handler: the start transition
(counting attempts), the final transition (acking the id from the active list),
retries with backoff through ``{ns}:delayed`` for transient faults, dead-lettering
after ``max_attempts``, cancellation, and graceful shutdown.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.core.clock import Clock
from shared.core.settings import Settings
from shared.engine.batching import Batcher
from shared.engine.control import follow_control
from shared.engine.ending import end_run, write_last_lines
from shared.engine.fleet import FleetGate
from shared.engine.jobs import TERMINAL, JobRecord, JobStore, Status
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome, after_fault, dead_letter, transient_cause
from shared.engine.queue import Queue, Taken
from shared.engine.recovery import EndedHook, recover_dead_workers, requeue, requeue_all
from shared.engine.replies import Claimed
from shared.engine.reporting import EndHook, report_end
from shared.engine.stages import Stage
from shared.engine.upkeep import ended_among, release_due_forever, requeue_orphans
from shared.engine.workers import Registry
from shared.redis.keys import Keys

log = structlog.get_logger("consumer")

TAKE_TIMEOUT_S = 5.0
ERROR_BACKOFF_S = 1.0
BATCHERS = 2  # connections carrying the slots' end-and-take calls


Handler = Callable[[JobRecord, LogWriter], Awaitable[Outcome]]


class Consumer:
    """Runs ``handler`` for ids taken from ``stage``'s list on ``slots`` slots."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        *,
        stage: Stage,
        worker_id: str,
        slots: int,
        handler: Handler,
        blocking_redis: Callable[[], Redis],
        obey_fleet: bool = False,
        on_end: EndHook | None = None,
        on_worker_ended: EndedHook | None = None,
        after_first_run: Callable[[], None] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.store = JobStore(redis, keys, settings, clock)
        self.stage = stage
        self.queue_key = self.stage.queue(keys)
        self.worker_id = worker_id
        self.slots = slots
        self.handler = handler
        self.blocking_redis = blocking_redis
        self.on_end = on_end
        self.on_worker_ended = on_worker_ended  # frees what a dead worker of this host held
        self.after_first_run = after_first_run  # once, after a run has fully ended
        self.clock = clock
        self.active_key = keys.active(worker_id)
        self.registry = Registry(
            redis,
            keys,
            worker_id,
            kind=self.stage.name,
            slots=slots,
            queue=self.queue_key,
            clock=clock,  # heartbeats and the stale cutoff on one clock
        )
        self.gate = FleetGate(
            redis,
            keys,
            enabled=obey_fleet,
            permit_ttl_ms=int(settings.heartbeat_interval_s * 3000),
            clock=clock,
        )
        self.log = log.bind(stage=self.stage.name, worker=worker_id)
        self.busy = 0
        self.taken: set[str] = set()  # ids this process has taken and not finished
        self._taking: set[anyio.CancelScope] = set()
        self._running: dict[str, anyio.CancelScope] = {}
        self._cancel_requested: set[str] = set()
        self._drained: anyio.Event | None = None
        self._healthy_beats = 0
        self._orphan_suspects: set[str] = set()
        self._batchers: list[Batcher] = []

    # -- lifecycle of the process -------------------------------------------------

    async def run(self, stopping: anyio.Event) -> None:
        """Work until ``stopping`` is set, then drain within the grace period."""
        await self._beat()
        self.log.info("consumer.started", slots=self.slots)
        try:
            async with anyio.create_task_group() as tg:
                # Two groups of slots in turn keep both Redis and this process busy: one
                # group's calls run in Redis while this process handles the other's.
                groups = min(BATCHERS, self.slots)
                self._batchers = [Batcher(self.blocking_redis()) for _ in range(groups)]
                for batcher in self._batchers:
                    tg.start_soon(batcher.run)
                tg.start_soon(self._housekeeping)
                tg.start_soon(release_due_forever, self.redis, self.store, self.log)
                tg.start_soon(
                    follow_control,
                    self.blocking_redis,
                    self.keys.control_channel,
                    self._on_control,
                )
                async with anyio.create_task_group() as slots:
                    slots.start_soon(self._stop_when, stopping)
                    for index in range(self.slots):
                        slots.start_soon(self._slot, index, stopping)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave()
            self.log.info("consumer.stopped")

    async def _leave(self) -> None:
        try:
            moved = await requeue_all(
                self.store,
                active=self.active_key,
                stage=self.stage,
                reason=f"{self.worker_id} shut down before finishing",
            )
            for job_id in moved:
                self.log.info("consumer.requeued", job_id=job_id)
            for slot in list(self.gate.permits):
                await self.gate.release(slot)
            await self.registry.unregister()
        except RedisError as exc:
            self.log.error("consumer.leave_failed", error=str(exc), active=self.active_key)

    async def _stop_when(self, stopping: anyio.Event) -> None:
        await stopping.wait()
        self._cancel_takes()
        self.gate.wake()
        if self._running:
            grace = self.settings.grace_period_s
            self.log.info("consumer.draining", jobs=len(self._running), grace_s=grace)
            self._drained = anyio.Event()
            with anyio.move_on_after(grace):
                await self._drained.wait()
            for scope in list(self._running.values()):
                scope.cancel()

    def _cancel_takes(self) -> None:
        for scope in list(self._taking):
            scope.cancel()

    # -- slots --------------------------------------------------------------------

    async def _slot(self, index: int, stopping: anyio.Event) -> None:
        conn = self.blocking_redis()
        store = JobStore(conn, self.keys, self.settings, self.clock)
        batcher = self._batchers[index % len(self._batchers)]
        fields = {"worker": self.worker_id}
        queue = Queue(store, self.stage, self.active_key, fields=fields, batcher=batcher)
        slot = f"{self.worker_id}:{index}"
        held: Claimed | None = None  # taken by the call that ended the slot's last job
        try:
            while not stopping.is_set():
                if held is None:
                    held = await self._take(queue, slot, stopping)
                if held is not None:
                    held = await self._run_one(queue, held, stopping)
                    if self.gate.state.max_concurrency is not None:
                        await self.gate.release(slot)
        finally:
            with anyio.CancelScope(shield=True):
                if held is not None:  # taken as the stop began, never run: give it back
                    await self._give_back(held.job_id)
                await conn.aclose()

    async def _give_back(self, job_id: str) -> None:
        """Requeue a job this slot took but never ran, with its attempt refunded (if
        Redis is away, ``_leave`` or recovery requeues it later, attempt counted)."""
        try:
            await requeue(
                self.store,
                job_id,
                active=self.active_key,
                stage=self.stage,
                reason=f"{self.worker_id} stopped before running it",
                unrun=True,
            )
        except RedisError as exc:
            self.log.warning("consumer.give_back_failed", job_id=job_id, error=str(exc))
        self.taken.discard(job_id)

    async def _take(self, queue: Queue, slot: str, stopping: anyio.Event) -> Claimed | None:
        """Wait for this slot's turn, then for a job: taken and started, or None."""
        try:
            if not await self.gate.wait_turn(slot, stopping, self.settings.heartbeat_interval_s):
                return None
        except RedisError as exc:
            self.log.warning("consumer.gate_failed", error=str(exc))
            await anyio.sleep(ERROR_BACKOFF_S)
            return None
        with anyio.CancelScope() as scope:
            self._taking.add(scope)
            try:
                return self._claimed(await queue.wait(TAKE_TIMEOUT_S))
            except RedisError as exc:
                # An id BLMOVE moved before the error waits in the active list: the
                # next take of any slot starts it (or the orphan check requeues it).
                self.log.warning("consumer.take_failed", slot=slot, error=str(exc))
                await anyio.sleep(ERROR_BACKOFF_S)
            finally:
                self._taking.discard(scope)
        return None

    def _claimed(self, taken: Taken) -> Claimed | None:
        """The job a take started, now held by this process; None if there is none."""
        for job_id, status in taken.dropped:
            if job_id not in self.taken:  # not one of ours that was cancelled while running
                self.log.info("job.skipped", job_id=job_id, status=status or "missing")
        claimed = taken.claimed
        if claimed is None:
            return None
        if not claimed.started.changed:
            # Ended (cancelled) or gone while queued: the take dropped it, unrun.
            status = claimed.started.status or "missing"
            self.log.info("job.skipped", job_id=claimed.job_id, status=status)
            return None
        self.taken.add(claimed.job_id)
        return claimed

    def _may_take_next(self, stopping: anyio.Event) -> bool:
        """Whether ending a job may take the next in the same call: not when stopping,
        paused, or when each job needs a fleet permit."""
        gate = self.gate
        if stopping.is_set():
            return False
        return not gate.enabled or (not gate.state.paused and gate.state.max_concurrency is None)

    # -- one job ------------------------------------------------------------------

    async def _run_one(
        self, queue: Queue, claimed: Claimed, stopping: anyio.Event
    ) -> Claimed | None:
        """Run one started job; returns the next job if ending this one took it."""
        job_id, started = claimed.job_id, claimed.started
        record = JobRecord.from_hash(started.record)
        structlog.contextvars.bind_contextvars(
            job_id=job_id, service=record.service, worker=self.worker_id
        )
        writer = LogWriter(
            self.redis,
            self.keys,
            job_id,
            max_bytes=self.settings.log_max_bytes,
            max_entries=self.settings.log_max_entries,
        )
        attempts = int(started.record.get(self.stage.attempts_field, "1"))
        self.busy += 1
        began = time.monotonic()
        after: Claimed | None = None
        try:
            if attempts > self.settings.max_attempts:
                outcome: Outcome | None = dead_letter(
                    attempts,
                    record.error or "its worker died while running it",
                    max_attempts=self.settings.max_attempts,
                    dead_list=self.keys.dead,
                )
            elif job_id in self._cancel_requested:  # cancelled after its take, before now
                outcome = Outcome(Status.CANCELLED, {"error": "cancelled"})
            else:
                outcome = await self._execute(record, writer, attempts)
            if outcome is not None:
                take_next = self._may_take_next(stopping)
                after = await self._finish(
                    queue, job_id, writer, outcome, began, take_next=take_next
                )
            return after
        finally:
            self.busy -= 1
            if after is None or after.job_id != job_id:
                self.taken.discard(job_id)
            self._cancel_requested.discard(job_id)
            structlog.contextvars.unbind_contextvars("job_id", "service", "worker")

    async def _execute(self, record: JobRecord, writer: LogWriter, attempts: int) -> Outcome | None:
        """The handler's outcome; None if it was cut off by shutdown (stays active)."""
        with anyio.CancelScope() as scope:
            self._running[record.id] = scope
            try:
                return await self.handler(record, writer)
            except Exception as exc:
                cause = transient_cause(exc)
                if cause is not None:
                    return self._retry(attempts, cause)
                # A bug in one job's handling must not take the daemon down.
                self.log.exception("job.internal_error")
                return Outcome(Status.FAILED, {"error": f"internal error: {type(exc).__name__}"})
            finally:
                del self._running[record.id]
                if self._drained is not None and not self._running:
                    self._drained.set()
        if record.id in self._cancel_requested:
            self._cancel_requested.discard(record.id)
            return Outcome(Status.CANCELLED, {"error": "cancelled"})
        return None

    def _retry(self, attempts: int, exc: BaseException) -> Outcome:
        s = self.settings
        return after_fault(
            attempts,
            exc,
            stage=self.stage,
            max_attempts=s.max_attempts,
            base_s=s.retry_base_s,
            cap_s=s.retry_cap_s,
            dead_list=self.keys.dead,
        )

    async def _finish(
        self,
        queue: Queue,
        job_id: str,
        writer: LogWriter,
        outcome: Outcome,
        began: float,
        *,
        take_next: bool,
    ) -> Claimed | None:
        """End the run; returns the next job if the final transition also took one."""
        await write_last_lines(writer, outcome, self.log)
        terminal = outcome.status in TERMINAL
        ended = await end_run(
            queue,
            job_id,
            outcome,
            fetch=terminal,  # for the outcome line
            take_next=take_next,
            clock=self.clock,
            log=self.log,
        )
        if ended is None:
            return None
        claimed = None if ended.taken is None else self._claimed(ended.taken)
        await report_end(ended.result, outcome, on_end=self.on_end, began=began, log=self.log)
        if self.after_first_run is not None:
            after, self.after_first_run = self.after_first_run, None
            after()
        return claimed

    # -- background duties -------------------------------------------------------

    async def _beat(self) -> None:
        await self.registry.beat(self.busy)

    async def _housekeeping(self) -> None:
        """Every heartbeat: beat, follow the fleet, notice cancels and orphans, and
        recover dead workers' jobs."""
        interval = self.settings.heartbeat_interval_s
        while True:
            try:
                await self._beat()
                self._healthy_beats += 1
                if await self.gate.refresh():
                    self._cancel_takes()
                await self._check_cancelled()
                await self._check_orphans()
                await recover_dead_workers(
                    self.redis,
                    self.store,
                    first=self._healthy_beats == 1,
                    # Only a worker connected for a while judges others stale: right
                    # after an outage everyone's heartbeat looks old.
                    judge_stale=self._healthy_beats >= 3,
                    interval_s=interval,
                    stale_s=self.settings.worker_stale_s,
                    on_ended=self.on_worker_ended,
                )
            except RedisError as exc:
                self._healthy_beats = 0
                self.log.warning("consumer.housekeeping_failed", error=str(exc))
            await anyio.sleep(interval)

    async def _check_cancelled(self) -> None:
        """Fallback for a missed cancel notice: ended jobs still running are stopped."""
        for job_id in await ended_among(self.store, list(self._running)):
            self._cancel_job(job_id)

    async def _check_orphans(self) -> None:
        self._orphan_suspects = await requeue_orphans(
            self.store,
            active=self.active_key,
            stage=self.stage,
            held=self.taken,
            suspects=self._orphan_suspects,
            log=self.log,
        )

    def _cancel_job(self, job_id: str) -> None:
        scope = self._running.get(job_id)
        if scope is not None:
            self._cancel_requested.add(job_id)
            scope.cancel()
            self.log.info("job.cancel_requested", job_id=job_id)
        elif job_id in self.taken:  # taken, its handler not started yet: it never starts
            self._cancel_requested.add(job_id)
            self.log.info("job.cancel_requested", job_id=job_id)

    async def _on_control(self, notice: dict[str, Any]) -> None:
        kind = notice.get("type")
        if kind == "cancel":
            self._cancel_job(str(notice.get("id")))
        elif kind == "fleet":
            if await self.gate.refresh():
                self._cancel_takes()
        elif kind == "permit":
            self.gate.wake()
