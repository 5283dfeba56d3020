"""What a consumer does once a run's final transition is in: the end hook, and the
run's log line (a job's one ``job.outcome`` line when that transition ended it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared.engine.jobs import TERMINAL, Transition
from shared.engine.outcome import Outcome, outcome_line

EndHook = Callable[[dict[str, str]], Awaitable[None]]


async def report_end(
    result: Transition,
    outcome: Outcome,
    *,
    on_end: EndHook | None,
    began: float,
    log: Any,
) -> None:
    """Call ``on_end`` with the ended record and log the run; ``began`` is the run's
    ``time.monotonic()`` start."""
    terminal = outcome.status in TERMINAL
    if result.changed and terminal and on_end is not None:
        try:
            await on_end(result.record)
        except Exception:
            # The job has ended; a failing end hook must not take the daemon down.
            log.exception("job.end_hook_failed")
    if terminal and result.changed:  # this call ended the job: its one outcome line
        if log.is_enabled_for(logging.INFO):  # building the line costs a record parse
            log.info("job.outcome", **outcome_line(result.record))
        return
    log.info(
        "job.finished" if terminal else "job.moved",
        status=outcome.status.value,
        duration_ms=int((time.monotonic() - began) * 1000),
        error=outcome.fields.get("error"),
        applied=result.changed,
    )
