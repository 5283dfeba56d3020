"""The job store over Redis: submit, move (every change one Lua call), take, read.

The record types live in :mod:`shared.engine.records` and are re-exported here."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from shared.core.clock import Clock, now_ms
from shared.core.redaction import redact_build, redact_url
from shared.core.settings import Settings
from shared.engine.records import (
    ACTIVE,
    PHASES,
    TERMINAL,
    JobRecord,
    Phase,
    Priority,
    Status,
    new_job_id,
)
from shared.engine.replies import (
    CANCEL,
    REVIVE,
    SUBMIT,
    TAKE,
    TRANSITION,
    Cancellation,
    Claimed,
    Moved,
    Revival,
    Submitted,
    Transition,
)
from shared.redis.keys import Keys
from shared.redis.replies import ReplyTable
from shared.redis.scripts import Scripts

if TYPE_CHECKING:
    from shared.engine.stages import Stage

__all__ = [  # the record types are re-exported: most callers import them from here
    "ACTIVE",
    "PHASES",
    "TERMINAL",
    "JobRecord",
    "JobStore",
    "Move",
    "Phase",
    "Priority",
    "Status",
    "Transition",
    "decode_transition",
    "new_job_id",
    "redact_url",
]


def decode_transition(result: Any, table: ReplyTable[Moved] = TRANSITION) -> Transition:
    """A ``transition()`` reply (``_transition.lua``) as a :class:`Transition`."""
    reply: Moved = table(result[0])
    detail = str(result[1]) if len(result) > 1 else None
    if reply is Moved.CHANGED:
        return Transition(reply, record=json.loads(detail) if detail else {})
    return Transition(reply, detail)


@dataclass(frozen=True, slots=True)
class Move:
    """One transition's keys and arguments (``take.lua`` can end a job with one first)."""

    keys: list[str]
    args: list[str | int]


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

    async def _submit(
        self,
        job_id: str,
        idem_key: str | None,
        *,
        service: str,
        repo_url: str,
        ref: str | None,
        root_dir: str | None,
        build: Mapping[str, Any] | None,
        submitter: str,
        priority: Priority,
        secrets_of: str | None,
    ) -> tuple[Submitted, str]:
        fields: list[str] = ["service", service, "repo_url", redact_url(repo_url)]
        fields += ["submitter", submitter, "priority", priority.value]
        optional = {"ref": ref, "root_dir": root_dir, "secrets_of": secrets_of}
        for name, value in optional.items():
            if value:
                fields += [name, value]
        private = ""
        if build:
            fields += ["build", json.dumps(redact_build(build), separators=(",", ":"))]
            private = json.dumps(dict(build), separators=(",", ":"))
        k = self.keys
        keys = [k.job(job_id), k.jobs, k.seq(service), k.ingest, k.events, k.build(job_id)]
        keys += [k.fair(k.ingest), k.submissions(service)]
        if idem_key is not None:
            keys.append(k.idem(idem_key))
        result = await self.scripts.submit(
            keys=keys,
            args=[
                job_id,
                now_ms(self.clock),
                self.settings.jobs_index_max,
                self.settings.events_max_entries,
                self.settings.idempotency_ttl_s * 1000,
                private,
                *fields,
            ],
        )
        # CREATED carries the new job's seq, REPEATED the first job's id.
        return SUBMIT(result[0]), str(result[1])

    async def submit(
        self,
        job_id: str,
        *,
        service: str,
        repo_url: str,
        ref: str | None = None,
        root_dir: str | None = None,
        build: Mapping[str, Any] | None = None,
        submitter: str = "",
        priority: Priority = Priority.NORMAL,
        secrets_of: str | None = None,
    ) -> int:
        """Create the record and push the id onto ingest; returns the submission seq."""
        _, seq = await self._submit(
            job_id,
            None,
            service=service,
            repo_url=repo_url,
            ref=ref,
            root_dir=root_dir,
            build=build,
            submitter=submitter,
            priority=priority,
            secrets_of=secrets_of,
        )
        return int(seq)

    async def submit_once(
        self,
        job_id: str,
        idem_key: str,
        *,
        service: str,
        repo_url: str,
        ref: str | None = None,
        root_dir: str | None = None,
        build: Mapping[str, Any] | None = None,
        submitter: str = "",
        priority: Priority = Priority.NORMAL,
        secrets_of: str | None = None,
    ) -> tuple[str, bool]:
        """Like :meth:`submit`, but a repeated ``idem_key`` (hashed by the caller)
        returns the first job's id; returns ``(id, created)``."""
        created, value = await self._submit(
            job_id,
            idem_key,
            service=service,
            repo_url=repo_url,
            ref=ref,
            root_dir=root_dir,
            build=build,
            submitter=submitter,
            priority=priority,
            secrets_of=secrets_of,
        )
        return (job_id, True) if created is Submitted.CREATED else (value, False)

    def transition_args(
        self,
        job_id: str,
        status: Status,
        flags: str,
        score: int,
        fields: Mapping[str, Any],
        *,
        incr: Mapping[str, int] | None = None,
    ) -> list[str | int]:
        """A transition's ARGV (``_transition.lua`` explains each)."""
        args: list[str | int] = [
            job_id,
            status.value,
            now_ms(self.clock),
            1 if status in TERMINAL else 0,
            self.settings.job_ttl_s,
            self.settings.events_max_entries,
            flags or "-",
            score,
        ]
        for name, value in fields.items():
            if value is not None:
                args += [name, str(value)]
        for name, by in (incr or {}).items():
            args += [f"+{name}", by]  # the script's HINCRBY syntax
        return args

    def move(
        self,
        job_id: str,
        status: Status,
        *,
        ack: str | None = None,
        strict: bool = False,
        from_delayed: bool = False,
        push: str | None = None,
        head: bool = False,
        delay_until_ms: int | None = None,
        attempt: bool = False,
        incr: Mapping[str, int] | None = None,
        fetch: bool = False,
        **fields: str | int | None,
    ) -> Move:
        """The keys and arguments of one transition; :meth:`transition` explains them."""
        k = self.keys
        keys = [k.job(job_id), k.events, k.logs(job_id), k.build(job_id)]
        flags = "r" if fetch else ""
        source = k.delayed if from_delayed else ack
        if source is not None:
            flags += "z" if from_delayed else ("A" if strict else "a")
        destination = k.delayed if delay_until_ms is not None else push
        if destination is not None:
            keys.append(source if source is not None else k.job(job_id))
            keys.append(destination)
            if delay_until_ms is not None:
                flags += "d"
            elif head:
                flags += "h"
            elif destination in (k.queue, k.ingest):
                flags += "f"  # a stage's queue: at the job's fair place (_fair.lua)
                keys.append(k.fair(destination))
            else:
                flags += "p"
        elif source is not None:
            keys.append(source)
        increments = dict(incr or {})
        if attempt:
            increments["attempts"] = increments.get("attempts", 0) + 1
        if status in TERMINAL or status is Status.RETRYING:
            flags += "s"  # counted in the stats hash, which goes last (_stats.lua)
            keys.append(k.stats)
        args = self.transition_args(
            job_id, status, flags, delay_until_ms or 0, fields, incr=increments
        )
        return Move(keys, args)

    async def transition(
        self,
        job_id: str,
        status: Status,
        *,
        ack: str | None = None,
        strict: bool = False,
        from_delayed: bool = False,
        push: str | None = None,
        head: bool = False,
        delay_until_ms: int | None = None,
        attempt: bool = False,
        incr: Mapping[str, int] | None = None,
        fetch: bool = False,
        **fields: str | int | None,
    ) -> Transition:
        """Move ``job_id`` to ``status`` in one atomic step, optionally:

        - taking it off ``ack`` (a list; with ``strict``, only if it is still there)
          or off ``{ns}:delayed`` (``from_delayed``, only if it is still there);
        - putting it on ``push`` (the tail, or the head with ``head``) or on
          ``{ns}:delayed`` due at ``delay_until_ms``.

        ``fields`` are set, ``incr`` fields are incremented by their value (``attempt``
        adds 1 to ``attempts``). Ended jobs never change again.
        """
        move = self.move(
            job_id, status, ack=ack, strict=strict, from_delayed=from_delayed, push=push,
            head=head, delay_until_ms=delay_until_ms, attempt=attempt, incr=incr, fetch=fetch,
            **fields,
        )  # fmt: skip
        return await self.apply(move)

    async def apply(self, move: Move) -> Transition:
        """Run one transition built by :meth:`move`."""
        return decode_transition(await self.scripts.transition(keys=move.keys, args=move.args))

    def take_call(
        self,
        source: str,
        active: str,
        status: Status,
        *,
        mode: str = "q",
        waiting: Status | None = None,
        end: Move | None = None,
        incr: Mapping[str, int] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> Move:
        """The keys and arguments of one ``take.lua`` call (the script explains them):
        start jobs of ``source`` at ``status`` in ``active``, ending ``end`` first."""
        k = self.keys
        start = self.transition_args("", status, "rx", 0, fields or {}, incr=incr)[1:]
        keys = [source, active, k.events]
        wait = "" if waiting is None else waiting.value
        args: list[str | int] = [k.job(""), k.logs(""), k.build(""), mode, wait, len(start)]
        args += start
        if end is not None:
            job, _, logs, build, ack, *destination = end.keys
            if ack != active:
                raise ValueError("a take can only end a job that it acks from its active list")
            keys += [job, logs, build, *destination]
            args += end.args
        return Move(keys, args)

    async def take(
        self,
        source: str,
        active: str,
        status: Status,
        *,
        incr: Mapping[str, int] | None = None,
        **fields: str | int | None,
    ) -> Claimed | None:
        """Move the oldest id of ``source`` into ``active`` and start it, in one call;
        None when ``source`` is empty. A consumer's slots take through
        :class:`shared.engine.queue.Queue` (blocking, or ending a job first)."""
        call = self.take_call(source, active, status, incr=incr, fields=fields)
        _, job_id, started, _ = await self.scripts.take(keys=call.keys, args=call.args)
        return Claimed(str(job_id), decode_transition(started, TAKE)) if job_id else None

    async def cancel(self, job_id: str, reason: str) -> Cancellation:
        """End a job as cancelled wherever it is; running workers are notified."""
        k = self.keys
        result = await self.scripts.cancel(
            keys=[
                k.job(job_id),
                k.events,
                k.logs(job_id),
                k.ingest,
                k.queue,
                k.delayed,
                k.build(job_id),
                k.stats,
            ],
            args=[
                job_id,
                now_ms(self.clock),
                self.settings.job_ttl_s,
                self.settings.events_max_entries,
                k.control_channel,
                reason,
            ],
        )
        return Cancellation(CANCEL(result[0]), str(result[1]) if len(result) > 1 else None)

    async def revive(self, job_id: str, stage: Stage) -> Revival:
        """Put a failed/cancelled/dead job back in ``stage``'s list, at its resume status."""
        k = self.keys
        destination = stage.queue(k)
        result = await self.scripts.revive(
            keys=[
                k.job(job_id),
                k.events,
                k.logs(job_id),
                k.dead,
                destination,
                k.build(job_id),
                k.fair(destination),
            ],
            args=[
                job_id,
                now_ms(self.clock),
                self.settings.events_max_entries,
                stage.resume_status.value,
            ],
        )
        return Revival(REVIVE(result[0]), str(result[1]) if len(result) > 1 else None)

    async def build_override(self, job_id: str) -> dict[str, Any] | None:
        """The job's build override as submitted (with its command and env values),
        or None if it had none or it is gone. Only the deployer reads this."""
        raw = await self.redis.get(self.keys.build(job_id))
        if raw is None:
            return None
        value = json.loads(str(raw))
        return value if isinstance(value, dict) else None

    async def get_raw(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return {str(k): str(v) for k, v in raw.items()}

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
                pipe.hgetall(self.keys.job(str(job_id)))
            for raw in await pipe.execute():
                if not raw:
                    continue
                rec = JobRecord.from_hash({str(k): str(v) for k, v in raw.items()})
                if (service is None or rec.service == service) and (
                    status is None or rec.status == status
                ):
                    out.append(rec)
                    if len(out) >= limit:
                        return out
        return out
