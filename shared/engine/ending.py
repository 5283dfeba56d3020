"""Ending a run: the outcome's last log lines, then the final transition that acks the
id from the active list, retried while Redis is unreachable. A slot that goes on
working takes its next job in that same call (``take.lua``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
from redis.exceptions import RedisError

from shared.core.clock import Clock, now_ms
from shared.engine.jobs import Status
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome
from shared.engine.queue import Queue, Taken
from shared.engine.replies import Transition

FINISH_DEADLINE_S = 120.0


@dataclass(frozen=True, slots=True)
class Ended:
    """The final transition's reply, and what the same call took (if it was asked to)."""

    result: Transition
    taken: Taken | None


async def write_last_lines(writer: LogWriter, outcome: Outcome, log: Any) -> None:
    """Say why a run failed or is retried, and flush the job's log; a lost log is no
    reason to keep the job from ending."""
    error = outcome.fields.get("error")
    try:
        if outcome.status is Status.FAILED:
            await writer.line(f"buildq: deployment failed: {error}")
        elif outcome.status is Status.RETRYING:
            await writer.line(f"buildq: {error}; retrying in {outcome.delay_s:.1f}s")
        await writer.close()
    except RedisError as exc:
        log.warning("job.log_lost", error=str(exc))


async def end_run(
    queue: Queue,
    job_id: str,
    outcome: Outcome,
    *,
    fetch: bool,
    take_next: bool,
    clock: Clock,
    log: Any,
) -> Ended | None:
    """Apply ``outcome`` to ``job_id`` and ack it; with ``take_next``, take and start
    the next job in the same call. ``fetch`` returns the final record.

    None if Redis did not take it within ``FINISH_DEADLINE_S``: the id stays in the
    active list, and is requeued once Redis is back.
    """
    refund = {queue.stage.attempts_field: -1} if outcome.refund_attempt else None
    due = None if outcome.delay_s is None else now_ms(clock) + int(outcome.delay_s * 1000)
    fields: dict[str, Any] = outcome.record_fields()
    deadline = time.monotonic() + FINISH_DEADLINE_S
    pause = 0.1
    while True:
        move = queue.store.move(
            job_id,
            outcome.status,
            ack=queue.active,
            push=outcome.push,
            delay_until_ms=due,
            incr=refund,
            fetch=fetch,
            **fields,
        )
        try:
            if not take_next:
                return Ended(await queue.store.apply(move), None)
            taken = await queue.take(move)
            assert taken.ended is not None  # it was asked to end the job
            return Ended(taken.ended, taken)
        except RedisError as exc:
            if time.monotonic() > deadline:
                log.error("job.finish_failed", error=str(exc))
                return None
            log.warning("job.finish_retry", error=str(exc))
            # A lost reply may have ended the job and taken the next already: retry the
            # end alone; an id taken that way is the orphan check's to requeue.
            take_next = False
            await anyio.sleep(pause)
            pause = min(pause * 2, 5.0)
