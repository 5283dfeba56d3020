"""Writing back into Redis what it lost, from the S3 copies (:mod:`shared.engine.durable`):
a job, a live alias, a counter. Each is one Lua call that changes nothing when Redis
already has the job, the same or a newer alias, or a counter at least as high, so
``buildq doctor --recover`` can run twice, or beside live traffic."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.core.clock import Clock, now_ms
from shared.core.settings import Settings
from shared.engine.durable import AliasCopy
from shared.engine.records import JobRecord, Status
from shared.engine.replies import RAISE_COUNTER, RESTORE_ALIAS, RESTORE_JOB, Restored
from shared.redis.keys import Keys
from shared.redis.scripts import source

PROMOTIONS_MAX = 100  # as shared/coord/sites.py keeps (the coordination layer is above)
REQUEUED_LINE = (
    "buildq doctor --recover: Redis lost this job; restored from its S3 copy and "
    "queued again (cloned afresh)"
)
FAILED_LINE = "buildq doctor --recover: Redis lost this job; restored from its S3 copy: {error}"


class Restorer:
    """Recreates jobs, aliases and counters in Redis, never over newer state."""

    def __init__(
        self, redis: Redis, keys: Keys, settings: Settings, clock: Clock = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self._job: AsyncScript = redis.register_script(source("restore_job"))
        self._alias: AsyncScript = redis.register_script(source("restore_alias"))
        self._counter: AsyncScript = redis.register_script(source("raise_counter"))

    async def job(self, record: JobRecord, *, error: str | None = None) -> Restored:
        """Recreate ``record`` (same id, seq, fields) as ``accepted`` on the ingest list,
        or, with an ``error``, as ``failed`` with it; KEPT if Redis still has the job."""
        k, s = self.keys, self.settings
        fields: list[str] = ["service", record.service, "repo_url", record.repo_url]
        fields += ["submitter", record.submitter or "", "priority", record.priority.value]
        optional = {"ref": record.ref, "root_dir": record.root_dir, "secrets_of": record.secrets_of}
        for name, value in optional.items():
            if value:
                fields += [name, value]
        if record.build:  # the redacted copy: the private override never reaches S3
            fields += ["build", json.dumps(record.build, separators=(",", ":"))]
        status = Status.ACCEPTED if error is None else Status.FAILED
        line = REQUEUED_LINE if error is None else FAILED_LINE.format(error=error)
        result = await self._job(
            keys=[
                k.job(record.id),
                k.jobs,
                k.seq(record.service),
                k.ingest,
                k.events,
                k.fair(k.ingest),
                k.submissions(record.service),
                k.logs(record.id),
            ],
            args=[
                record.id,
                record.seq,
                record.created_at,
                now_ms(self.clock),
                s.jobs_index_max,
                s.events_max_entries,
                status.value,
                s.job_ttl_s,
                line,
                error or "",
                *fields,
            ],
        )
        return RESTORE_JOB(result[0])

    async def alias(self, alias: AliasCopy) -> Restored:
        """Point the service's live alias at the copy's deployment unless Redis has the
        same or a newer seq live."""
        k = self.keys
        result = await self._alias(
            keys=[k.site(alias.service), k.events, k.promotions(alias.service)],
            args=[
                alias.job_id,
                alias.seq,
                "" if alias.fence is None else alias.fence,
                alias.promoted_at or now_ms(self.clock),
                self.settings.events_max_entries,
                alias.service,
                PROMOTIONS_MAX,
            ],
        )
        return RESTORE_ALIAS(result[0])

    async def raise_counter(self, key: str, floor: int) -> Restored:
        """Raise the counter at ``key`` to ``floor`` if it is lower; never lower it."""
        result = await self._counter(keys=[key], args=[floor])
        return RAISE_COUNTER(result[0])

    async def counter(self, key: str) -> int | None:
        """A counter's value; None when Redis has no such key."""
        value = await self.redis.get(key)
        return None if value is None else int(value)
