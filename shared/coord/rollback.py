"""Instant rollback: point a service's live alias back at an earlier deployment whose
published files still exist, with no build and no upload.

Which deployment: the one the caller names, or by default the previous live one,
the newest entry of the service's promotion history that is not live now (so a
second rollback with no target undoes the first, as ``heroku rollback`` does).
The move itself is :meth:`Sites.rollback`, one Lua call that takes a new seq and a
new fence; here are the checks before it, each refusing with a clear message and
changing nothing: the deployment exists (in Redis or in S3's durable history), is
of this service, was published (went live, or was superseded after publishing) and
its manifest is still in S3 (not garbage-collected).
"""

from __future__ import annotations

import structlog

from shared.coord.sites import Rollback, RolledBack, Sites
from shared.core.clock import now_ms
from shared.core.errors import PermanentError, StorageError, ValidationError
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.storage.manifest import DEPLOYMENT_ID_RE, manifest_key
from shared.storage.s3 import ObjectNotFound, Storage, alias_key, record_key, serve_key

log = structlog.get_logger("rollback")

PUBLISHED = frozenset({Status.LIVE, Status.SUPERSEDED})
HISTORY_LOOKBACK = 100


class RollbackRefused(PermanentError):
    """A rollback that cannot be made; nothing changed. ``missing`` tells an unknown
    deployment (404) from one that exists but cannot go live (409)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class Rollbacks:
    """Chooses, checks and makes rollbacks for the API."""

    def __init__(self, sites: Sites, store: JobStore, storage: Storage) -> None:
        self.sites = sites
        self.store = store
        self.storage = storage

    async def roll_back(self, service: str, to: str | None, *, by: str) -> tuple[str, Rollback]:
        """Make ``to`` (default: the previous live deployment) live again; returns its
        id and the new seq and fence. RollbackRefused says why it cannot be."""
        live_id = (await self.sites.live(service)).get("id") or None
        if to is None:
            target, expected = await self.previous(service, live_id), live_id
        else:
            if not DEPLOYMENT_ID_RE.fullmatch(to):
                raise ValidationError(f"invalid deployment id {to[:40]!r}")
            target, expected = to, None
        if target == live_id:
            raise RollbackRefused(f"deployment {target} is already live for {service}")
        await self.check(service, target)
        result = await self.sites.rollback(service, target, expected_live=expected, by=by)
        if result.outcome is RolledBack.ALREADY_LIVE:
            raise RollbackRefused(f"deployment {target} is already live for {service}")
        if result.outcome is RolledBack.MOVED:
            raise RollbackRefused(
                f"the live deployment of {service} changed meanwhile (now "
                f"{result.live_id or 'none'}); nothing was rolled back: try again"
            )
        await self._save_alias(service, target, result, previous=live_id)
        log.info("site.rolled_back", service=service, id=target, seq=result.seq, by=by)
        return target, result

    async def previous(self, service: str, live_id: str | None) -> str:
        """The deployment that was live before the current one."""
        for entry in await self.sites.promotions(service, limit=HISTORY_LOOKBACK):
            if entry["id"] != live_id:
                return str(entry["id"])
        # Promoted before promotion histories were kept: the newest other live job.
        for record in await self.store.recent(limit=HISTORY_LOOKBACK, service=service):
            if record.status is Status.LIVE and record.id != live_id:
                return record.id
        raise RollbackRefused(f"{service} has no earlier live deployment to roll back to")

    async def check(self, service: str, job_id: str) -> JobRecord:
        """The deployment's record if it can go live for ``service``, else RollbackRefused."""
        record = await self.store.get(job_id) or await self._archived(job_id)
        if record is None:
            raise RollbackRefused(f"no deployment {job_id!r}", missing=True)
        if record.service != service:
            raise RollbackRefused(
                f"deployment {job_id} is of service {record.service}, not {service}"
            )
        if record.status not in PUBLISHED:
            raise RollbackRefused(
                f"deployment {job_id} was never published (it is {record.status.value})"
            )
        if record.superseded_by:
            raise RollbackRefused(
                f"deployment {job_id} was never published (superseded by "
                f"{record.superseded_by} before it built)"
            )
        if record.served_by:
            raise RollbackRefused(
                f"deployment {job_id} has no files of its own (its commit was served by "
                f"{record.served_by}): roll back to {record.served_by}"
            )
        if not (
            await self.storage.exists(manifest_key(job_id))
            or await self.storage.exists(serve_key(job_id))  # published before manifests
        ):
            raise RollbackRefused(
                f"the published files of deployment {job_id} are gone (garbage-collected: "
                "BUILDQ_KEEP_DEPLOYMENTS keeps the newest per service); deploy it again"
            )
        return record

    async def _archived(self, job_id: str) -> JobRecord | None:
        """The final record S3 keeps once Redis has forgotten the job."""
        try:
            data, _ = await self.storage.get(record_key(job_id))
        except ObjectNotFound:
            return None
        return JobRecord.model_validate_json(data)

    async def _save_alias(
        self, service: str, job_id: str, result: Rollback, *, previous: str | None
    ) -> None:
        """The durable copy of the alias, as a promotion writes it. Redis has already
        moved: a failure here is logged (GC keeps what either copy names), not raised."""
        alias = {
            "service": service,
            "id": job_id,
            "seq": result.seq,
            "fence": result.fence,
            "promoted_at": now_ms(),
            "rollback": True,
            "from": previous,
        }
        try:
            await self.storage.put_json(alias_key(service), alias)
        except StorageError as exc:
            log.warning("site.alias_not_saved", service=service, id=job_id, error=str(exc))
