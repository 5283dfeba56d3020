"""One job, start to finish: fetch source, build, publish, promote, record."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import structlog
from redis.asyncio import Redis

from deployer.build import BuildTimeout, Limits, build_env, run_build
from deployer.buildconfig import BuildConfig, detect, resolve_output
from deployer.publish import publish_dir
from shared.archive import extract
from shared.errors import StorageError, ValidationError
from shared.jobs import JobRecord, JobStore, Status, now_ms
from shared.keys import Keys
from shared.logs import LogWriter
from shared.outcome import Outcome
from shared.settings import Settings
from shared.sites import Sites, Verdict
from shared.storage import Storage, alias_key, record_key, site_prefix, source_key

log = structlog.get_logger("deployer")


class BuildFailed(Exception):
    """The build itself failed (its exit status or its output); never retried."""


class PromotionRefused(Exception):
    """The job may not go live: it ended meanwhile, or its deploy lock was lost."""


@dataclass
class JobRunner:
    """Runs claimed jobs for one deployer process."""

    settings: Settings
    keys: Keys
    redis: Redis
    store: JobStore
    storage: Storage
    work_root: Path

    def __post_init__(self) -> None:
        self.sites = Sites(self.redis, self.keys, events_max=self.settings.events_max_entries)

    async def run(self, record: JobRecord, writer: LogWriter) -> Outcome:
        """Build and publish a started job. Failures of the build itself end it;
        transient faults (S3, Redis, the disk) propagate so the consumer retries."""
        workdir = self.work_root / record.id
        try:
            status, fields = await self._execute(record, writer, workdir)
        except (BuildFailed, ValidationError, BuildTimeout, PromotionRefused) as exc:
            status, fields = Status.FAILED, {"error": str(exc)}
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        return Outcome(status, fields)

    async def _execute(
        self, record: JobRecord, writer: LogWriter, workdir: Path
    ) -> tuple[Status, dict[str, str]]:
        s = self.settings
        await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        (workdir / "src").mkdir(parents=True)
        archive = workdir / "source.tar.gz"
        await self.storage.get_to_file(source_key(record.id), archive)
        files = await anyio.to_thread.run_sync(
            lambda: extract(
                archive,
                workdir / "src",
                max_files=s.max_source_files,
                max_bytes=s.max_source_bytes,
            )
        )
        archive.unlink()
        await writer.line(f"buildq: fetched source ({files} files, commit {record.commit})")
        checkout = workdir / "src" / (record.root_dir or "")
        if not checkout.is_dir():
            raise BuildFailed(f"root_dir {record.root_dir!r} is not a directory in the repository")
        config = detect(checkout, record.build)
        await self._build(record, config, checkout, workdir, writer)
        output = resolve_output(checkout, config)

        await self.store.transition(record.id, Status.PUBLISHING)

        def skipped(rel: str, kind: str) -> None:
            writer.add(f"buildq: skipped {kind} {rel!r} (only regular files are published)")

        count, size = await publish_dir(
            self.storage,
            output,
            site_prefix(record.id),
            max_files=s.max_output_files,
            max_bytes=s.max_output_bytes,
            concurrency=s.upload_concurrency,
            on_skip=skipped,
        )
        await writer.line(f"buildq: published {count} files ({size} bytes)")
        return await self._promote(record, writer)

    async def _build(
        self,
        record: JobRecord,
        config: BuildConfig,
        checkout: Path,
        workdir: Path,
        writer: LogWriter,
    ) -> None:
        if config.command is None:
            await writer.line("buildq: no build configured; publishing the repository as is")
            return
        await writer.line(f"buildq: build from {config.source}: {config.command}")
        s = self.settings
        env = build_env(
            workdir / "home",
            config.env,
            {
                "BUILDQ_JOB_ID": record.id,
                "BUILDQ_SERVICE": record.service,
                "BUILDQ_COMMIT": record.commit or "",
            },
        )
        limits = Limits(
            timeout_s=s.build_timeout_s,
            cpu_s=s.build_cpu_s,
            memory_bytes=s.build_memory_mb * 1024 * 1024,
            file_bytes=s.build_file_mb * 1024 * 1024,
        )
        code = await run_build(config.command, checkout, env, limits, writer)
        if code != 0:
            raise BuildFailed(f"build exited with status {code}")

    async def _promote(self, record: JobRecord, writer: LogWriter) -> tuple[Status, dict[str, str]]:
        result = await self.sites.promote(record.service, record.id, record.seq)
        base = self.settings.site_base_url
        if result.outcome is Verdict.PROMOTED:
            await self.storage.put_json(
                alias_key(record.service),
                {
                    "service": record.service,
                    "id": record.id,
                    "seq": record.seq,
                    "promoted_at": now_ms(),
                },
            )
            await writer.line(f"buildq: {record.service} now serves {record.id}")
            return Status.LIVE, {"url": f"{base}/sites/{record.service}/"}
        if result.outcome is Verdict.SUPERSEDED:
            await writer.line(
                f"buildq: not promoted: submission {result.live_seq} ({result.live_id}) "
                "is newer and already live"
            )
            return Status.SUPERSEDED, {"url": f"{base}/preview/{record.id}/"}
        raise PromotionRefused(f"promotion refused: {result.outcome.value} {result.detail}")

    async def save_record(self, raw: dict[str, str]) -> None:
        """Keep the final record in S3 (``deployments/<id>.json``), beyond Redis TTLs."""
        try:
            record = JobRecord.from_hash(raw)
            await self.storage.put_json(record_key(record.id), record.model_dump(mode="json"))
        except StorageError as exc:
            log.warning("job.record_not_saved", error=str(exc))
