"""Job records: the status enum and its derived sets, the record model, job ids."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from shared.core.clock import Clock, now_ms


class Status(StrEnum):
    """Where a job is in its lifecycle."""

    ACCEPTED = "accepted"
    CLONING = "cloning"
    UPLOADING = "uploading"
    QUEUED = "queued"
    BUILDING = "building"
    PUBLISHING = "publishing"
    LIVE = "live"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    RETRYING = "retrying"
    WAITING = "waiting"


class Priority(StrEnum):
    """The order classes of a stage's queue (``shared/redis/lua/_fair.lua``): every
    ``high`` job is taken before any ``normal`` one, every ``normal`` before ``low``;
    within one, submitters take turns, and each submitter's jobs keep their order."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


TERMINAL = frozenset({Status.LIVE, Status.FAILED, Status.CANCELLED, Status.SUPERSEDED})
ACTIVE = frozenset({Status.CLONING, Status.UPLOADING, Status.BUILDING, Status.PUBLISHING})
PHASES = (
    Status.ACCEPTED,
    Status.CLONING,
    Status.UPLOADING,
    Status.QUEUED,
    Status.BUILDING,
    Status.PUBLISHING,
)


_PHASE_FIELDS = tuple((s.value, f"p:{s.value}:start", f"p:{s.value}:end") for s in PHASES)


def new_job_id(clock: Clock = time.time) -> str:
    """A 20-hex-digit id that sorts by creation time."""
    return f"{now_ms(clock):012x}{os.urandom(4).hex()}"


class Phase(BaseModel):
    """One phase's timing."""

    start: int
    end: int | None = None
    duration_ms: int | None = None


class JobRecord(BaseModel):
    """A job as the API shows it; ``attempts`` counts build attempts by deployers."""

    id: str
    status: Status
    service: str
    repo_url: str
    ref: str | None = None
    root_dir: str | None = None
    commit: str | None = None
    seq: int
    created_at: int
    updated_at: int
    ended_at: int | None = None
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    url: str | None = None
    build: dict[str, Any] | None = None
    ingest_attempts: int = 0
    retry_stage: str | None = None
    dead: bool = False
    holder: str | None = None
    submitter: str | None = None  # the identity that asked for it (fair turns)
    priority: Priority = Priority.NORMAL
    waiting_since: int | None = None  # when it first found its service locked
    superseded_by: str | None = None  # the newer job that made it stale before it built
    served_by: str | None = None  # the live deployment that already serves its commit
    # Set only by a verified webhook's preview of a branch of the service's own
    # repository: the service whose secrets its build gets instead of its own.
    secrets_of: str | None = None
    phases: dict[str, Phase] = {}

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> JobRecord:
        """Decode the Redis hash written by the Lua scripts (one validation pass)."""
        plain: dict[str, Any] = {k: v for k, v in raw.items() if k[:2] != "p:" and v != ""}
        phases: dict[str, dict[str, int]] = {}
        for name, start_field, end_field in _PHASE_FIELDS:
            start = raw.get(start_field)
            if start is None:
                continue
            end = raw.get(end_field)
            if end:
                phases[name] = {"start": int(start), "end": int(end)}
                phases[name]["duration_ms"] = int(end) - int(start)
            else:
                phases[name] = {"start": int(start)}
        if "build" in plain:
            plain["build"] = json.loads(plain["build"])
        plain["phases"] = phases
        return cls.model_validate(plain)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL
