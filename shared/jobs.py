"""Job records: the status enum, the record model and the store over Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel
from redis.asyncio import Redis

from shared.keys import Keys
from shared.scripts import Scripts
from shared.settings import Settings

Clock = Callable[[], float]


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


def now_ms(clock: Clock = time.time) -> int:
    """Milliseconds since the epoch from ``clock``."""
    return int(clock() * 1000)


def new_job_id(clock: Clock = time.time) -> str:
    """A 20-hex-digit id that sorts by creation time."""
    return f"{now_ms(clock):012x}{os.urandom(4).hex()}"


def redact_url(url: str) -> str:
    """``url`` without userinfo, so tokens never reach records or logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


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
    phases: dict[str, Phase] = {}

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> JobRecord:
        """Decode the Redis hash written by the Lua scripts."""
        phases: dict[str, Phase] = {}
        for status in PHASES:
            start = raw.get(f"p:{status}:start")
            if start is None:
                continue
            end = raw.get(f"p:{status}:end")
            phases[status.value] = Phase(
                start=int(start),
                end=int(end) if end else None,
                duration_ms=int(end) - int(start) if end else None,
            )
        plain: dict[str, Any] = {k: v for k, v in raw.items() if not k.startswith("p:") and v != ""}
        if "build" in plain:
            plain["build"] = json.loads(plain["build"])
        return cls.model_validate({**plain, "phases": phases})

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class JobStore:
    """Creates, reads and moves job records; every change is one Lua call."""

    def __init__(
        self, redis: Redis, keys: Keys, settings: Settings, clock: Clock = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.scripts = Scripts(redis)

    async def submit(
        self,
        job_id: str,
        *,
        service: str,
        repo_url: str,
        ref: str | None = None,
        root_dir: str | None = None,
        build: Mapping[str, Any] | None = None,
    ) -> int:
        """Create the record and push the id onto ingest; returns the submission seq."""
        fields: list[str] = ["service", service, "repo_url", redact_url(repo_url)]
        if ref:
            fields += ["ref", ref]
        if root_dir:
            fields += ["root_dir", root_dir]
        if build:
            fields += ["build", json.dumps(dict(build), separators=(",", ":"))]
        k = self.keys
        seq = await self.scripts.submit(
            keys=[k.job(job_id), k.jobs, k.seq(service), k.ingest, k.events],
            args=[
                job_id,
                now_ms(self.clock),
                self.settings.jobs_index_max,
                self.settings.events_max_entries,
                *fields,
            ],
        )
        return int(seq)

    async def transition(
        self,
        job_id: str,
        status: Status,
        *,
        ack: str | None = None,
        push: str | None = None,
        head: bool = False,
        attempt: bool = False,
        fetch: bool = False,
        **fields: str | int | None,
    ) -> tuple[bool, dict[str, str]]:
        """Move ``job_id`` to ``status``, optionally LREM-ing it from ``ack`` and
        pushing it onto ``push`` (at the head when ``head``: claimed next) in the
        same atomic step; ``attempt`` counts one more attempt.

        Returns ``(changed, record)``; ``changed`` is false when the job is gone or
        has already ended (ended jobs never change again). ``record`` is filled when
        ``fetch`` is set, or with the current status when nothing changed.
        """
        k = self.keys
        keys = [k.job(job_id), k.events, k.logs(job_id)]
        flags = ("r" if fetch else "") + ("i" if attempt else "")
        if ack is not None or push is not None:
            keys.append(ack if ack is not None else k.job(job_id))
            flags += "a" if ack is not None else ""
        if push is not None:
            keys.append(push)
            flags += "h" if head else "p"
        args: list[str | int] = [
            job_id,
            status.value,
            now_ms(self.clock),
            1 if status in TERMINAL else 0,
            self.settings.job_ttl_s,
            self.settings.events_max_entries,
            flags or "-",
        ]
        for name, value in fields.items():
            if value is not None:
                args += [name, str(value)]
        result = await self.scripts.transition(keys=keys, args=args)
        if not result:
            return False, {}
        changed, payload = int(result[0]), result[1]
        if not changed:
            return False, {"status": _text(payload)}
        return True, _pairs(payload)

    async def get_raw(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None if unknown or expired."""
        raw = await self.get_raw(job_id)
        return JobRecord.from_hash(raw) if raw else None

    async def recent(
        self, *, limit: int = 50, service: str | None = None, status: Status | None = None
    ) -> list[JobRecord]:
        """Newest jobs first, filtered; reads at most a few pages of the index."""
        ids = await self.redis.zrevrange(self.keys.jobs, 0, max(limit * 4, 200) - 1)
        out: list[JobRecord] = []
        batch = 100
        for start in range(0, len(ids), batch):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids[start : start + batch]:
                pipe.hgetall(self.keys.job(_text(job_id)))
            for raw in await pipe.execute():
                if not raw:
                    continue
                rec = JobRecord.from_hash({_text(k): _text(v) for k, v in raw.items()})
                if (service is None or rec.service == service) and (
                    status is None or rec.status == status
                ):
                    out.append(rec)
                    if len(out) >= limit:
                        return out
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    it = iter(flat)
    return {_text(k): _text(v) for k, v in zip(it, it, strict=True)}
