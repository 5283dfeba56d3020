"""A pool of slots consuming one reliable queue: take, run, retry, drain, recover.

Both stages use it: the uploader's ingest stage (``{ns}:ingest``) and the deployer
(``{ns}:queue``). Each slot owns one connection: while the queue has work a take is
one Lua call that also starts the job; when it is empty the slot blocks in BLMOVE,
which returns the moment an id is pushed. Nothing polls.

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

from shared.core.clock import Clock, now_ms
from shared.core.settings import Settings
from shared.engine.control import follow_control
from shared.engine.fleet import FleetGate
from shared.engine.jobs import TERMINAL, JobRecord, JobStore, Status
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome, after_fault, dead_letter, transient_cause
from shared.engine.queue import Queue
from shared.engine.recovery import recover_stale_workers, requeue, requeue_all
from shared.engine.replies import Transition
from shared.engine.scheduler import release_due
from shared.engine.stages import Stage
from shared.engine.workers import Registry
from shared.redis.keys import Keys

log = structlog.get_logger("consumer")

TAKE_TIMEOUT_S = 5.0
ERROR_BACKOFF_S = 1.0
FINISH_DEADLINE_S = 120.0


Handler = Callable[[JobRecord, LogWriter], Awaitable[Outcome]]
EndHook = Callable[[dict[str, str]], Awaitable[None]]


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

    # -- lifecycle of the process -------------------------------------------------

    async def run(self, stopping: anyio.Event) -> None:
        """Work until ``stopping`` is set, then drain within the grace period."""
        await self._beat()
        self.log.info("consumer.started", slots=self.slots)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._housekeeping)
                tg.start_soon(self._scheduler)
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
        queue = Queue(conn, self.queue_key, self.active_key)
        slot = f"{self.worker_id}:{index}"
        try:
            while not stopping.is_set():
                try:
                    if not await self.gate.wait_turn(
                        slot, stopping, self.settings.heartbeat_interval_s
                    ):
                        break
                except RedisError as exc:
                    self.log.warning("consumer.gate_failed", error=str(exc))
                    await anyio.sleep(ERROR_BACKOFF_S)
                    continue
                taken: tuple[str, Transition] | None = None
                with anyio.CancelScope() as scope:
                    self._taking.add(scope)
                    try:
                        taken = await self._take(store, queue)
                    except RedisError as exc:
                        self.log.warning("consumer.take_failed", slot=index, error=str(exc))
                        await anyio.sleep(ERROR_BACKOFF_S)
                    finally:
                        self._taking.discard(scope)
                if taken is not None:
                    await self._run_one(store, *taken)
                    if self.gate.state.max_concurrency is not None:
                        await self.gate.release(slot)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    async def _take(self, store: JobStore, queue: Queue) -> tuple[str, Transition] | None:
        status, attempt = self.stage.started_status, {self.stage.attempts_field: 1}
        fast = await store.take(
            self.queue_key, self.active_key, status, incr=attempt, worker=self.worker_id
        )
        if fast is not None:
            self.taken.add(fast.job_id)
            return fast.job_id, fast.started
        job_id = await queue.take(TAKE_TIMEOUT_S)
        if job_id is None:
            return None
        self.taken.add(job_id)
        try:
            started = await store.transition(
                job_id, status, incr=attempt, fetch=True, worker=self.worker_id
            )
            if not started.changed:
                await queue.ack(job_id)
        except BaseException:
            # The id stays in our active list; letting go of it here lets the orphan
            # check requeue it (kept in ``held``, it would sit there until shutdown).
            self.taken.discard(job_id)
            raise
        return job_id, started

    # -- one job ------------------------------------------------------------------

    async def _run_one(self, store: JobStore, job_id: str, started: Transition) -> None:
        """Run one started job; ``store`` is on the slot's own connection."""
        if not started.changed:
            self.taken.discard(job_id)
            self.log.info("job.skipped", job_id=job_id, status=started.status or "missing")
            return
        record = JobRecord.from_hash(started.record)
        structlog.contextvars.bind_contextvars(job_id=job_id, service=record.service)
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
        try:
            if attempts > self.settings.max_attempts:
                outcome: Outcome | None = dead_letter(
                    attempts,
                    record.error or "its worker died while running it",
                    max_attempts=self.settings.max_attempts,
                    dead_list=self.keys.dead,
                )
            else:
                outcome = await self._execute(record, writer, attempts)
            if outcome is not None:
                await self._finish(store, job_id, writer, outcome, began)
        finally:
            self.busy -= 1
            self.taken.discard(job_id)
            structlog.contextvars.unbind_contextvars("job_id", "service")

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
        self, store: JobStore, job_id: str, writer: LogWriter, outcome: Outcome, began: float
    ) -> None:
        error = outcome.fields.get("error")
        try:
            if outcome.status is Status.FAILED:
                await writer.line(f"buildq: deployment failed: {error}")
            elif outcome.status is Status.RETRYING:
                await writer.line(f"buildq: {error}; retrying in {outcome.delay_s:.1f}s")
            await writer.close()
        except RedisError as exc:
            self.log.warning("job.log_lost", error=str(exc))
        terminal = outcome.status in TERMINAL
        fields: dict[str, Any] = outcome.record_fields()
        refund = {self.stage.attempts_field: -1} if outcome.refund_attempt else None
        due = None if outcome.delay_s is None else now_ms(self.clock) + int(outcome.delay_s * 1000)
        deadline = time.monotonic() + FINISH_DEADLINE_S
        pause = 0.1
        while True:
            try:
                result = await store.transition(
                    job_id,
                    outcome.status,
                    ack=self.active_key,
                    push=outcome.push,
                    delay_until_ms=due,
                    incr=refund,
                    fetch=terminal and self.on_end is not None,
                    **fields,
                )
                break
            except RedisError as exc:
                if time.monotonic() > deadline:
                    # Left in the active list: requeued when Redis is back.
                    self.log.error("job.finish_failed", error=str(exc))
                    return
                self.log.warning("job.finish_retry", error=str(exc))
                await anyio.sleep(pause)
                pause = min(pause * 2, 5.0)
        if result.changed and terminal and self.on_end is not None:
            await self.on_end(result.record)
        self.log.info(
            "job.finished" if terminal else "job.moved",
            status=outcome.status.value,
            duration_ms=int((time.monotonic() - began) * 1000),
            error=error,
            applied=result.changed,
        )

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
                # Only a worker that has been connected for a while judges others
                # stale: right after an outage everyone's heartbeat looks old.
                if self._healthy_beats >= 3:
                    await recover_stale_workers(
                        self.redis,
                        self.store,
                        stale_s=self.settings.worker_stale_s,
                        lock_ttl_ms=int(interval * 1000),
                    )
            except RedisError as exc:
                self._healthy_beats = 0
                self.log.warning("consumer.housekeeping_failed", error=str(exc))
            await anyio.sleep(interval)

    async def _check_cancelled(self) -> None:
        """Fallback for a missed cancel notice: ended jobs still running are stopped."""
        running = list(self._running)
        if not running:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in running:
            pipe.hget(self.keys.job(job_id), "ended_at")
        for job_id, ended in zip(running, await pipe.execute(), strict=True):
            if ended:
                self._cancel_job(job_id)

    async def _check_orphans(self) -> None:
        """Ids in our active list that no slot holds (a lost reply, a failed final
        write) are requeued once seen on two heartbeats in a row."""
        ids: Any = await self.redis.lrange(self.active_key, 0, -1)
        suspects = {i for i in ids if i not in self.taken}
        for job_id in suspects & self._orphan_suspects:
            if job_id not in self.taken and await requeue(
                self.store,
                job_id,
                active=self.active_key,
                stage=self.stage,
                reason="taken but not running in its worker",
            ):
                self.log.warning("consumer.orphan_requeued", job_id=job_id)
        self._orphan_suspects = suspects

    def _cancel_job(self, job_id: str) -> None:
        scope = self._running.get(job_id)
        if scope is not None:
            self._cancel_requested.add(job_id)
            scope.cancel()
            self.log.info("job.cancel_requested", job_id=job_id)

    async def _scheduler(self) -> None:
        """Move due retries back to their queue; sleeps until the next is due (≤ 1 s)."""
        while True:
            wait_s = 1.0
            try:
                _, next_due = await release_due(self.redis, self.keys, self.store)
                if next_due is not None:
                    wait_s = min(1.0, max(0.01, (next_due - now_ms(self.clock)) / 1000))
            except RedisError as exc:
                self.log.warning("consumer.scheduler_failed", error=str(exc))
            await anyio.sleep(wait_s)

    async def _on_control(self, notice: dict[str, Any]) -> None:
        kind = notice.get("type")
        if kind == "cancel":
            self._cancel_job(str(notice.get("id")))
        elif kind == "fleet":
            if await self.gate.refresh():
                self._cancel_takes()
        elif kind == "permit":
            self.gate.wake()
