"""Keep the cyclic garbage collector's full passes short in the daemons.

A full (generation 2) collection walks every container object the process holds.
Once a deployer has run its first job it holds ~110,000 of them, most of them
boto3's and botocore's parsed service models, loaded for good; a full pass then
stalls the event loop — and every job, heartbeat and lock watchdog on it — for
40-75 ms, every few jobs (measured with ``gc.callbacks`` on a deployer publishing
a 1,701-file site). Those objects never become garbage, so once its first job has
fully ended (``Consumer(after_first_run=settle)``: after the job's final transition,
so that job is not delayed) the process collects once and moves everything alive
into the permanent generation (:func:`gc.freeze`); later full passes walk only what
came after: 3-5 ms.

Objects frozen are still freed by reference counting when released; only a cycle
among them would never be collected, and what is alive at that moment is
start-up state plus at most the jobs then running, once.
"""

from __future__ import annotations

import gc
import time

import structlog

log = structlog.get_logger("heap")


def settle() -> None:
    """Collect, then keep everything still alive out of later collections."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "heap.settled",
        frozen=gc.get_freeze_count(),
        took_ms=round((time.perf_counter() - started) * 1000, 1),
    )
