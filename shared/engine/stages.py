"""The two stages a job runs through, each one value that owns its keys, statuses and
fields: ingest (clone and archive the source) and build (build, publish, promote).

Every module that branches on a stage asks its :class:`Stage` instead of rebuilding
the mapping: the list its jobs wait in, the status they resume at, the status while
a worker runs them, and the record field that counts their attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shared.engine.jobs import Status
from shared.engine.workers import new_worker_id
from shared.redis.keys import Keys


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the pipeline and everything a caller needs to move its jobs."""

    name: str
    """Stored in a job's ``retry_stage`` and a worker's ``kind``; prefixes worker ids."""
    list_key: Callable[[Keys], str] = field(repr=False, compare=False)
    resume_status: Status
    """The status of a job waiting in this stage's list (new, requeued or retried)."""
    started_status: Status
    """The status a worker sets when it takes a job of this stage."""
    attempts_field: str
    """The record field counting this stage's attempts."""
    statuses: frozenset[Status]
    """Every status a job has while it belongs to this stage (waiting or running)."""

    def queue(self, keys: Keys) -> str:
        """This stage's queue: the list its jobs wait in (``{ns}:ingest`` or ``{ns}:queue``)."""
        return self.list_key(keys)

    def new_worker_id(self) -> str:
        """A fresh id for a worker of this stage (its active list is keyed by it)."""
        return new_worker_id(self.name)

    @staticmethod
    def named(stored: str | None) -> Stage:
        """The stage a job's ``retry_stage`` names; build for none (older records)."""
        return INGEST if stored == INGEST.name else BUILD

    @staticmethod
    def of_queue(keys: Keys, queue: str | None) -> Stage:
        """The stage whose list is ``queue`` (a worker's ``queue`` field); build if none."""
        return INGEST if queue == INGEST.queue(keys) else BUILD

    @staticmethod
    def of_status(status: Status) -> Stage:
        """The stage a job at ``status`` belongs to (build for anything past ingest)."""
        return INGEST if status in INGEST.statuses else BUILD


INGEST = Stage(
    name="ingest",
    list_key=lambda keys: keys.ingest,
    resume_status=Status.ACCEPTED,
    started_status=Status.CLONING,
    attempts_field="ingest_attempts",
    statuses=frozenset({Status.ACCEPTED, Status.CLONING, Status.UPLOADING}),
)
BUILD = Stage(
    name="deployer",
    list_key=lambda keys: keys.queue,
    resume_status=Status.QUEUED,
    started_status=Status.BUILDING,
    attempts_field="attempts",
    statuses=frozenset({Status.QUEUED, Status.BUILDING, Status.PUBLISHING}),
)
STAGES = (INGEST, BUILD)
