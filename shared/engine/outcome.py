"""How a job ends or moves on after a run, and the retry decision as a pure function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from shared.core.errors import TransientError
from shared.engine.jobs import JobRecord, Status
from shared.engine.retry import backoff_s
from shared.engine.stages import Stage

TRANSIENT = (TransientError, RedisError, OSError)


def transient_cause(exc: Exception) -> BaseException | None:
    """The fault to retry for, if ``exc`` is transient: itself, or for an exception
    group (concurrent work failing together) its first failure when every failure
    in it is transient. None means the error is not worth retrying."""
    if isinstance(exc, TRANSIENT):
        return exc
    if isinstance(exc, ExceptionGroup):
        leaves = list(_leaves(exc))
        if leaves and all(isinstance(e, TRANSIENT) for e in leaves):
            return leaves[0]
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """Final status and fields, and where the id goes next (a list, or delayed)."""

    status: Status
    fields: Mapping[str, str] = field(default_factory=dict)
    push: str | None = None
    delay_s: float | None = None
    resume: Stage | None = None
    """Delayed: the stage whose list the job goes back to when it is due."""
    refund_attempt: bool = False
    """The run does not count as an attempt of its stage (it only waited)."""
    dead: bool = False
    """Given up: the record is marked dead-lettered."""

    def record_fields(self) -> dict[str, str]:
        """The record fields to set: ``fields`` and what ``resume`` and ``dead`` store."""
        out = dict(self.fields)
        if self.resume is not None:
            out["retry_stage"] = self.resume.name
        if self.dead:
            out["dead"] = "1"
        return out


def dead_letter(attempts: int, error: str, *, max_attempts: int, dead_list: str) -> Outcome:
    """Give up: the job fails and its id goes to the dead-letter list."""
    tried = min(attempts, max_attempts)
    message = f"gave up after {tried} attempt{'s' if tried != 1 else ''}: {error}"
    return Outcome(Status.FAILED, {"error": message}, push=dead_list, dead=True)


def after_fault(
    attempts: int,
    exc: BaseException,
    *,
    stage: Stage,
    max_attempts: int,
    base_s: float,
    cap_s: float,
    dead_list: str,
) -> Outcome:
    """Retry later with backoff, or dead-letter once ``max_attempts`` are spent."""
    error = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
    if attempts >= max_attempts:
        return dead_letter(attempts, error, max_attempts=max_attempts, dead_list=dead_list)
    delay = backoff_s(attempts, base_s=base_s, cap_s=cap_s)
    return Outcome(Status.RETRYING, {"error": error}, delay_s=delay, resume=stage)


def outcome_line(raw: Mapping[str, str]) -> dict[str, object]:
    """The fields of a job's one canonical ``job.outcome`` log line, from its ended
    record (``job_id``, ``service`` and ``worker`` are bound in the log context)."""
    record = JobRecord.from_hash(raw)
    line: dict[str, object] = {
        "status": record.status.value,
        "attempts": record.attempts,
        "ingest_attempts": record.ingest_attempts,
        "phases_ms": {
            name: p.duration_ms for name, p in record.phases.items() if p.duration_ms is not None
        },
        "total_ms": None if record.ended_at is None else record.ended_at - record.created_at,
    }
    if record.commit:
        line["commit"] = record.commit
    if record.error:
        line["error"] = record.error
    if record.dead:
        line["dead"] = True
    return line
