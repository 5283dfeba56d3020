"""The ingest stage: clone a job's repository, archive it to S3, queue it for build."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.archive import pack
from shared.errors import StorageError, ValidationError
from shared.jobs import JobRecord, JobStore, Status
from shared.keys import Keys
from shared.logs import LogWriter
from shared.settings import Settings
from shared.storage import Storage, source_key
from uploader.clone import clone
from uploader.repourl import validate_repo_url

log = structlog.get_logger("ingest")


@dataclass
class Ingest:
    """Handles one claimed id from ``{ns}:ingest``."""

    settings: Settings
    keys: Keys
    redis: Redis
    store: JobStore
    storage: Storage
    worker_id: str
    active_key: str
    git_limiter: anyio.CapacityLimiter

    async def run(self, job_id: str) -> Status:
        changed, raw = await self.store.transition(
            job_id, Status.CLONING, fetch=True, worker=self.worker_id
        )
        if not changed:
            await self.redis.lrem(self.active_key, 0, job_id)
            return Status(raw["status"]) if raw.get("status") else Status.CANCELLED
        record = JobRecord.from_hash(raw)
        structlog.contextvars.bind_contextvars(job_id=job_id, service=record.service)
        writer = LogWriter(
            self.redis,
            self.keys,
            job_id,
            max_bytes=self.settings.log_max_bytes,
            max_entries=self.settings.log_max_entries,
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"buildq-ingest-{job_id}-"))
        try:
            await self._ingest(record, writer, workdir)
        except ValidationError as exc:
            await self._fail(job_id, writer, str(exc))
        except (StorageError, RedisError, OSError) as exc:
            await self._fail(job_id, writer, f"infrastructure error: {exc}")
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
            structlog.contextvars.unbind_contextvars("job_id", "service")
        return Status.QUEUED

    async def _ingest(self, record: JobRecord, writer: LogWriter, workdir: Path) -> None:
        s = self.settings
        url = validate_repo_url(record.repo_url, allow_local=s.allow_local_repos)
        checkout = workdir / "repo"
        await writer.line(f"buildq: cloning {record.repo_url} ({record.ref or 'default branch'})")
        commit = await anyio.to_thread.run_sync(
            lambda: clone(url, checkout, ref=record.ref, timeout_s=s.clone_timeout_s),
            limiter=self.git_limiter,
        )
        await writer.line(f"buildq: cloned commit {commit}")
        await self.store.transition(record.id, Status.UPLOADING, commit=commit)

        def skipped(rel: str, kind: str) -> None:
            writer.add(f"buildq: skipped {kind} {rel!r} (only regular files are archived)")

        archive = workdir / "source.tar.gz"
        files = await anyio.to_thread.run_sync(
            lambda: pack(
                checkout,
                archive,
                max_files=s.max_source_files,
                max_bytes=s.max_source_bytes,
                on_skip=skipped,
            ),
            limiter=self.git_limiter,
        )
        size = archive.stat().st_size
        await self.storage.put_file(source_key(record.id), archive, mime="application/gzip")
        await writer.line(f"buildq: uploaded source ({files} files, {size} bytes compressed)")
        await writer.close()
        await self.store.transition(
            record.id, Status.QUEUED, ack=self.active_key, push=self.keys.queue
        )
        log.info("job.queued", commit=commit, files=files, archive_bytes=size)

    async def _fail(self, job_id: str, writer: LogWriter, error: str) -> None:
        await writer.line(f"buildq: deployment failed: {error}")
        await writer.close()
        await self.store.transition(job_id, Status.FAILED, ack=self.active_key, error=error)
        log.info("job.finished", status="failed", error=error)
