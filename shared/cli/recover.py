"""``buildq doctor --recover``: after Redis lost data (FLUSHALL, a replica promoted
without the latest writes, a lost volume), put back from S3 what buildq needs to go
on without a promotion going backwards or a job going missing.

In this order, each step idempotent (:mod:`shared.engine.restore`):

1. **Live aliases**: each service's alias from its S3 copy, where Redis has none or
   an older seq, and the deployment's files are still in S3.
2. **Counters**: ``seq:<service>`` up to the highest seq S3 recorded for the service
   (acceptance copies, final records, its alias). ``fence:<service>``, where Redis
   shows it lost the service's data (its alias or seq was behind S3, or its fence
   is missing or below the alias's), up to ``max(recorded + 1, now in ms)``: fences
   taken after the last promotion are recorded nowhere, and a counter restarted
   from the wall clock in milliseconds is above every fence INCR handed out before
   (fewer than one lock acquisition per millisecond), so an old lock holder's
   fence never matches again.
3. **Jobs**: every job with an acceptance copy, no final record, and no record in
   Redis, recreated with its id, seq and fields and queued for ingest again (cloned
   afresh: its source in S3 may be partial). A job whose build override had a
   command or env values fails at once instead, saying so: only the redacted copy
   is ever written to S3, and it must never build without its command.

It talks to Redis and S3 directly (an operator command, like the rest of doctor).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import click
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.cli.render import print_json
from shared.core.clock import Clock, now_ms
from shared.core.errors import BuildqError
from shared.core.redaction import HIDDEN
from shared.core.settings import Settings
from shared.engine.durable import (
    AcceptedCopy,
    AliasCopy,
    accepted_copies,
    alias_copies,
    ended_ids,
    ended_key,
    read_record,
    read_records,
)
from shared.engine.history import keep_ended
from shared.engine.records import JobRecord
from shared.engine.replies import Restored
from shared.engine.restore import Restorer
from shared.redis.keys import Keys
from shared.storage.manifest import manifest_key
from shared.storage.objects import Storage
from shared.storage.s3 import serve_key

OVERRIDE_LOST = (
    "its build override (command and env values) was only in Redis, which lost it; "
    "submit the deployment again"
)


@dataclass
class Recovery:
    """What a recovery did, per category."""

    aliases_restored: list[str] = field(default_factory=list)  # services
    aliases_current: int = 0
    aliases_files_gone: list[str] = field(default_factory=list)  # services
    seq_raised: dict[str, int] = field(default_factory=dict)  # service -> new value
    seq_current: int = 0
    fence_raised: dict[str, int] = field(default_factory=dict)
    fence_current: int = 0
    jobs_requeued: list[str] = field(default_factory=list)  # job ids
    jobs_failed: list[str] = field(default_factory=list)
    jobs_in_redis: int = 0
    jobs_ended: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The human summary: one count line per category, then what changed."""
        out = [
            f"aliases: {len(self.aliases_restored)} restored, {self.aliases_current} "
            f"already current, {len(self.aliases_files_gone)} not restored (files gone)",
            f"seq counters: {len(self.seq_raised)} raised, {self.seq_current} already current",
            f"fence counters: {len(self.fence_raised)} raised, {self.fence_current} "
            "already current",
            f"jobs: {len(self.jobs_requeued)} re-queued, {len(self.jobs_failed)} failed "
            f"(build override lost), {self.jobs_in_redis} still in Redis, "
            f"{self.jobs_ended} ended",
        ]
        out += [f"  alias restored: {name}" for name in self.aliases_restored]
        out += [f"  alias NOT restored, files gone: {name}" for name in self.aliases_files_gone]
        out += [f"  seq:{name} -> {value}" for name, value in self.seq_raised.items()]
        out += [f"  fence:{name} -> {value}" for name, value in self.fence_raised.items()]
        out += [f"  job re-queued: {job_id}" for job_id in self.jobs_requeued]
        out += [f"  job failed: {job_id}" for job_id in self.jobs_failed]
        return out


@dataclass
class Recorded:
    """The highest seq and fence S3 recorded for each service."""

    seq: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fence: dict[str, int] = field(default_factory=dict)

    def note(self, service: str, seq: int, fence: int | None = None) -> None:
        self.seq[service] = max(self.seq[service], seq)
        if fence is not None:
            self.fence[service] = max(self.fence.get(service, 0), fence)


class Recoverer:
    """Reads S3's copies and writes back into Redis what it lost."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        storage: Storage,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.storage = storage
        self.clock = clock
        self.restorer = Restorer(redis, keys, settings, clock)

    async def run(self) -> Recovery:
        """Recover aliases, then counters, then jobs; see the module docstring."""
        done = Recovery()
        copies = await accepted_copies(self.storage)
        ended = await ended_ids(self.storage)
        aliases = await alias_copies(self.storage)
        recorded = Recorded()
        for copy in copies:
            recorded.note(copy.service, copy.seq)
        for alias in aliases:
            recorded.note(alias.service, alias.seq, alias.fence)
        # Jobs that ended before acceptance copies were written: their seqs count too.
        known = {c.job_id for c in copies}
        legacy = [ended_key(job_id) for job_id in sorted(ended - known)]
        for record in await read_records(self.storage, legacy):
            recorded.note(record.service, record.seq)

        behind = await self._aliases(aliases, done)
        await self._counters(recorded, behind, done)
        await self._jobs([c for c in copies if c.job_id not in ended], done)
        done.jobs_ended = len({c.job_id for c in copies} & ended)
        return done

    async def _aliases(self, aliases: Iterable[AliasCopy], done: Recovery) -> set[str]:
        """Restore aliases; returns the services whose Redis alias was behind S3."""
        behind: set[str] = set()
        for alias in sorted(aliases, key=lambda a: a.service):
            if not await self._published(alias.job_id):
                done.aliases_files_gone.append(alias.service)
                continue
            if await self.restorer.alias(alias) is Restored.RESTORED:
                done.aliases_restored.append(alias.service)
                behind.add(alias.service)
            else:
                done.aliases_current += 1
        return behind

    async def _published(self, job_id: str) -> bool:
        return await self.storage.exists(manifest_key(job_id)) or await self.storage.exists(
            serve_key(job_id)  # published before manifests
        )

    async def _counters(self, recorded: Recorded, behind: set[str], done: Recovery) -> None:
        k, r = self.keys, self.restorer
        for service in sorted(recorded.seq):
            seq = recorded.seq[service]
            current_seq = await r.counter(k.seq(service))
            lost = service in behind or current_seq is None or current_seq < seq
            if await r.raise_counter(k.seq(service), seq) is Restored.RESTORED:
                done.seq_raised[service] = seq
            else:
                done.seq_current += 1
            fence = recorded.fence.get(service)
            current_fence = await r.counter(k.fence(service))
            if current_fence is None or (fence is not None and current_fence < fence):
                lost = True
            floor = max((fence or 0) + 1, now_ms(self.clock))
            if lost and await r.raise_counter(k.fence(service), floor) is Restored.RESTORED:
                done.fence_raised[service] = floor
            else:
                done.fence_current += 1

    async def _jobs(self, unended: list[AcceptedCopy], done: Recovery) -> None:
        """Recreate the unended jobs Redis no longer has, oldest first (by seq)."""
        pipe = self.redis.pipeline(transaction=False)
        for copy in unended:
            pipe.exists(self.keys.job(copy.job_id))
        present = await pipe.execute() if unended else []
        for copy, exists in sorted(
            zip(unended, present, strict=True), key=lambda p: (p[0].service, p[0].seq)
        ):
            if exists:
                done.jobs_in_redis += 1
                continue
            record = await read_record(self.storage, copy.key)
            if record is None:
                continue  # removed or unreadable since the listing (logged)
            error = OVERRIDE_LOST if _has_private_build(record) else None
            if await self.restorer.job(record, error=error) is Restored.KEPT:
                done.jobs_in_redis += 1  # recreated meanwhile (a concurrent recovery)
            elif error is None:
                done.jobs_requeued.append(record.id)
            else:
                done.jobs_failed.append(record.id)
                raw: Any = await self.redis.hgetall(self.keys.job(record.id))
                await keep_ended(self.redis, self.keys, self.storage, raw)


def _has_private_build(record: JobRecord) -> bool:
    """Whether the job's build override had parts only its private Redis key kept."""
    build = record.build or {}
    env = build.get("env")
    values = list(env.values()) if isinstance(env, dict) else []
    return HIDDEN in (build.get("command"), *values)


async def recover(settings: Settings) -> Recovery:
    """Run a recovery against the configured Redis and storage."""
    from shared.redis.client import make_redis
    from shared.storage.backend import open_storage

    redis = make_redis(settings)
    try:
        storage = open_storage(settings)
        return await Recoverer(redis, Keys(settings.namespace), settings, storage).run()
    finally:
        await redis.aclose()


def recover_command(settings: Settings, *, as_json: bool) -> None:
    """``buildq doctor --recover [--json]``: run it and print what it did; a Redis or
    storage fault is a clean error (exit 1), and running again is safe."""
    try:
        done = anyio.run(recover, settings)
    except (BuildqError, RedisError) as exc:
        raise click.ClickException(f"recovery stopped: {exc}; it is safe to run again") from None
    if as_json:
        print_json(done.as_json())
        return
    for line in done.lines():
        click.echo(line)
