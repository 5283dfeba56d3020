"""One job, start to finish: fetch source, build, publish, promote, record."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog
from redis.asyncio import Redis

from deployer.build import BuildOutOfMemory, BuildTimeout, Limits, build_env, run_build
from deployer.buildconfig import BuildConfig, detect, resolve_output
from deployer.cache import restore_cache
from deployer.publish import Target, known_blobs, publish_site
from deployer.sandbox import sandbox_for
from deployer.source import fetch_source
from deployer.staleness import Staleness, StaleVerdict, ended_fields
from shared.coord.lockbook import LockLostError, LockRecord, LockTimeoutError
from shared.coord.locks import DeployLock
from shared.coord.secrets import build_secrets
from shared.coord.sites import Sites, Verdict
from shared.core.clock import now_ms
from shared.core.errors import BuildError, ConfigError, TransientError, ValidationError
from shared.core.redaction import HIDDEN, SecretRedactor
from shared.core.settings import Settings
from shared.core.siteaddr import preview_url, site_url
from shared.engine.history import keep_ended
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.engine.logs import LogWriter
from shared.engine.outcome import Outcome
from shared.engine.stages import BUILD
from shared.engine.stats import count_lock_wait
from shared.redis.keys import Keys
from shared.storage.digests import Digests
from shared.storage.manifest import ManifestCache
from shared.storage.s3 import Storage, alias_key

log = structlog.get_logger("deployer")
# Manifests a deployer keeps: the live chains (REUSE_DEPTH each) of the ~100 services
# it published last; a miss costs one GET of a manifest.
DEPLOYER_MANIFESTS = 300
RECHECK_MAX_S = 10.0  # the longest sleep of a job waiting for a deploy lock
LOCK_JOBS_SLACK_S = 60  # how long past lock_max_wait_s a service's waiting-job set lives


class BuildFailed(BuildError):
    """The build itself failed (its exit status or its output); never retried."""


class PromotionRefused(BuildError):
    """The job may not go live: it ended (was cancelled) meanwhile."""


def looks_like_spa(output: Path) -> bool:
    """A single-page app's output (Vite, CRA): the root ``index.html`` is its only page."""
    if not (output / "index.html").is_file():
        return False
    for root, _dirs, files in os.walk(output):
        top = Path(root) == output
        if any(name.endswith(".html") and not (top and name == "index.html") for name in files):
            return False
    return True


def recheck_delay_s(waited_s: float, recheck_s: float) -> float:
    """How long a ``waiting`` job sleeps before it looks at the lock again: a tenth of
    the time waited so far, between ``recheck_s`` and RECHECK_MAX_S. The release that
    frees the lock wakes it sooner; the sleep bounds what a missed wake costs (a lock
    that expired, or was released the instant the job was deferred)."""
    return max(recheck_s, min(waited_s / 10, RECHECK_MAX_S))


@dataclass
class JobRunner:
    """Runs claimed jobs for one deployer process."""

    settings: Settings
    keys: Keys
    redis: Redis
    store: JobStore
    storage: Storage
    work_root: Path

    owner: str = "deployer"

    def __post_init__(self) -> None:
        s = self.settings
        self.sites = Sites(self.redis, self.keys, events_max=s.events_max_entries)
        # Immutable, so safe to keep; a publish reads only its own service's live chain.
        self.manifests = ManifestCache(self.storage, max_entries=DEPLOYER_MANIFESTS)
        self.locks = DeployLock(
            self.redis,
            self.keys,
            events_max=s.events_max_entries,
            owner=self.owner,
            ttl_ms=int(s.deploy_lock_ttl_s * 1000),
        )
        self.staleness = Staleness(self.redis, self.keys, s, self.store)

    async def run(self, record: JobRecord, writer: LogWriter) -> Outcome:
        """Build and publish a started job under its service's deploy lock.

        Failures of the build itself end the job; transient faults (S3, Redis, the
        disk, a lost lock) propagate so the consumer retries; a lock held by someone
        else defers the job as ``waiting``. A job that is stale when taken (a newer
        submission of its service, or its pinned commit live) ends before anything
        is fetched (``deployer/staleness.py``)."""
        stale = await self._stale(record, writer, at_take=True)
        if stale is not None:
            return Outcome(stale[0], {**stale[1], "holder": "", "waiting_since": ""})
        if record.waiting_since is not None:
            # A recheck: the lock is not waited for in a slot again. A release that
            # leaves it free makes this job due at once (lock_release.lua).
            holder = await self.locks.holder(record.service)
            if holder is not None:
                return await self._wait_for_lock(record, writer, holder)
            await self.redis.srem(self.keys.lock_jobs(record.service), record.id)
        workdir = self.work_root / record.id
        try:
            async with self.locks.holding(
                record.service,
                timeout_s=self.settings.lock_wait_s,
                task=f"deploy {record.id}",
                reason=f"deploying {record.id}",
                cancel_on_loss=True,
            ) as lease:
                await count_lock_wait(self.redis, self.keys, record, now_ms(self.store.clock))
                status, fields = await self._execute(record, writer, workdir, lease.fence)
        except LockTimeoutError as exc:
            return await self._wait_for_lock(record, writer, exc.holder)
        except LockLostError as exc:
            raise TransientError(f"{exc} while deploying; retrying") from exc
        except (
            BuildFailed,
            ValidationError,
            BuildTimeout,
            BuildOutOfMemory,
            PromotionRefused,
        ) as exc:
            status, fields = Status.FAILED, {"error": str(exc)}
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        return Outcome(status, {**fields, "holder": "", "waiting_since": ""})

    async def _wait_for_lock(
        self, record: JobRecord, writer: LogWriter, holder: LockRecord | None
    ) -> Outcome:
        """Defer the job (freeing the slot) until the lock may be free; waiting does
        not use up an attempt, but a job that has waited ``lock_max_wait_s`` fails
        naming the holder rather than wait forever."""
        who = "someone" if holder is None else holder.owner
        why = f" ({holder.reason})" if holder is not None and holder.reason else ""
        now = now_ms(self.store.clock)
        since = record.waiting_since or now
        waited_s = (now - since) / 1000
        if waited_s >= self.settings.lock_max_wait_s:
            return Outcome(
                Status.FAILED,
                {
                    "error": f"gave up after waiting {waited_s:.0f}s for the deploy lock of "
                    f"{record.service}, held by {who}{why}",
                    "holder": f"{who}{why}",
                },
            )
        if since == now:  # once, not on every recheck
            await writer.line(f"buildq: {record.service} is locked by {who}{why}; waiting")
        jobs = self.keys.lock_jobs(record.service)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(jobs, record.id)  # woken by the release that frees the lock
        pipe.expire(jobs, int(self.settings.lock_max_wait_s) + LOCK_JOBS_SLACK_S)
        await pipe.execute()
        return Outcome(
            Status.WAITING,
            {"holder": f"{who}{why}", "waiting_since": str(since)},
            delay_s=recheck_delay_s(waited_s, self.settings.lock_recheck_s),
            resume=BUILD,
            refund_attempt=True,
        )

    async def _execute(
        self, record: JobRecord, writer: LogWriter, workdir: Path, fence: int
    ) -> tuple[Status, dict[str, str]]:
        stale = await self._stale(record, writer, at_take=False)  # the lock wait may be long
        if stale is not None:
            return stale
        s = self.settings
        await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        digests = Digests()  # the source's, for the files the build leaves as they are
        files = await fetch_source(
            self.storage,
            record.id,
            workdir / "src",
            max_files=s.max_source_files,
            max_bytes=s.max_source_bytes,
            digests=digests,
        )
        # These two lines go to the log with the next one (``_build`` always starts
        # with one): one Redis round trip instead of three. On an error, the
        # consumer's last lines (``write_last_lines``) flush them first.
        writer.add(f"buildq: fetched source ({files} files, commit {record.commit})")
        checkout = workdir / "src" / (record.root_dir or "")
        if not checkout.is_dir():
            raise BuildFailed(f"root_dir {record.root_dir!r} is not a directory in the repository")
        config = detect(checkout, await self._requested_build(record))
        writer.add(f"buildq: detected {config.detected}")
        await self._build(record, config, checkout, workdir, writer, digests=digests)
        output = resolve_output(checkout, config)

        await self.store.transition(record.id, Status.PUBLISHING)

        def skipped(rel: str, kind: str) -> None:
            writer.add(f"buildq: skipped {kind} {rel!r} (only regular files are published)")

        spa = config.spa
        if spa is None:  # only front-end builds are single-page apps by default
            spa = config.origin == "package.json" and await anyio.to_thread.run_sync(
                looks_like_spa, output
            )
        live = await self.sites.live(record.service)  # still under our deploy lock
        parent, known = await known_blobs(self.manifests, live.get("id"))
        published = await publish_site(
            self.storage,
            output,
            Target(record.id, record.service, record.seq, spa),
            known=known,
            parent=parent,
            max_files=s.max_output_files,
            max_bytes=s.max_output_bytes,
            concurrency=s.upload_concurrency,
            on_skip=skipped,
            manifests=self.manifests,
            digests=digests,
        )
        how = "single-page app: unknown paths serve index.html" if spa else "static files"
        await writer.line(f"buildq: published {published.summary()}; serving as {how}")
        return await self._promote(record, writer, fence)

    async def _stale(
        self, record: JobRecord, writer: LogWriter, *, at_take: bool
    ) -> tuple[Status, dict[str, str]] | None:
        """How the job ends without building, if it is stale; None to build it."""
        decision = await self.staleness.check(record)
        if decision.verdict is StaleVerdict.BUILD:
            return None
        fields = ended_fields(record, decision, at_take=at_take)
        log.info("job.stale", verdict=decision.verdict.value, by=decision.by)
        if decision.verdict is StaleVerdict.SUPERSEDED:
            await writer.line(f"buildq: superseded by {decision.by}: {decision.reason}; not built")
            return Status.SUPERSEDED, fields
        await writer.line(f"buildq: {decision.reason}; not built, served by {decision.by}")
        return Status.LIVE, {**fields, "url": site_url(self.settings, record.service)}

    async def _requested_build(self, record: JobRecord) -> dict[str, Any] | None:
        """The request's build override with its real command and env values, from
        the job's private key (the record holds only a redacted copy)."""
        if not record.build:
            return None
        override = await self.store.build_override(record.id)
        if override is not None:
            return override
        if HIDDEN in (record.build.get("command"), *dict(record.build.get("env") or {}).values()):
            raise ValidationError("the job's build override has expired; submit it again")
        return record.build  # submitted before overrides were kept apart: nothing hidden

    async def _build(
        self,
        record: JobRecord,
        config: BuildConfig,
        checkout: Path,
        workdir: Path,
        writer: LogWriter,
        *,
        digests: Digests,
    ) -> None:
        if config.command is None:
            await writer.line("buildq: no build configured; publishing the repository as is")
            return
        if config.origin == "request":
            # A request's command may carry secrets; a repository's is in the repository.
            await writer.line("buildq: build from request (command hidden)")
        else:
            await writer.line(f"buildq: build from {config.origin}: {config.command}")
        s = self.settings
        secrets = await self._secrets(record, writer)
        env = build_env(
            workdir / "home",
            config.env,
            {
                "BUILDQ_JOB_ID": record.id,
                "BUILDQ_SERVICE": record.service,
                "BUILDQ_COMMIT": record.commit or "",
            },
            secrets,
        )
        limits = Limits(
            timeout_s=s.build_timeout_s,
            cpu_s=s.build_cpu_s,
            memory_bytes=s.build_memory_mb * 1024 * 1024,
            file_bytes=s.build_file_mb * 1024 * 1024,
        )
        cache = await restore_cache(
            self.storage, s, writer, service=record.service, config=config,
            checkout=checkout, workdir=workdir,
        )  # fmt: skip
        command = config.command
        if cache is not None:
            env, command = cache.build_env(env), cache.command(command)
            if command != config.command:
                inputs = f"{cache.plan.lock_name} and package.json"
                if cache.plan.lock_name == "package.json":
                    inputs = "package.json"
                await writer.line(
                    f"buildq: node_modules restored for this {inputs}: skipping "
                    f"{cache.plan.install_step.removesuffix(' && ')}"
                )
        sandbox = await sandbox_for(s)
        code = await run_build(
            command,
            checkout,
            env,
            limits,
            writer,
            sandbox=sandbox,
            workdir=workdir,
            redactor=SecretRedactor(secrets.values()),
            digests=digests,
        )
        if code != 0:
            raise BuildFailed(f"build exited with status {code}")
        if cache is not None:
            await cache.save(writer)

    async def _secrets(self, record: JobRecord, writer: LogWriter) -> dict[str, str]:
        """The secrets the build receives: its service's own or, for a webhook's
        preview of a branch of the service's repository, its parent's (``secrets_of``)."""
        owner = record.secrets_of or record.service
        try:  # before anything runs: a build must not go without its secrets
            secrets = await build_secrets(self.redis, self.keys, self.settings, owner)
        except ConfigError as exc:
            raise BuildFailed(str(exc)) from None
        if secrets:
            whose = (
                "the service's secrets" if owner == record.service else f"the secrets of {owner}:"
            )
            await writer.line(f"buildq: with {whose} {', '.join(sorted(secrets))}")
        return secrets

    async def _promote(
        self, record: JobRecord, writer: LogWriter, fence: int
    ) -> tuple[Status, dict[str, str]]:
        result = await self.sites.promote(record.service, record.id, record.seq, fence=fence)
        if result.outcome is Verdict.PROMOTED:
            await self.storage.put_json(
                alias_key(record.service),
                {
                    "service": record.service,
                    "id": record.id,
                    "seq": record.seq,
                    "fence": fence,  # buildq doctor --recover restores fences above it
                    "promoted_at": now_ms(),
                },
            )
            await writer.line(f"buildq: {record.service} now serves {record.id}")
            return Status.LIVE, {"url": site_url(self.settings, record.service)}
        if result.outcome is Verdict.SUPERSEDED:
            await writer.line(
                f"buildq: not promoted: submission {result.live_seq} ({result.live_id}) "
                "is newer and already live"
            )
            return Status.SUPERSEDED, {"url": preview_url(self.settings, record.id)}
        if result.outcome is Verdict.FENCED:
            # Our lock expired (a pause?) and someone else took it: never promote.
            raise TransientError(f"deploy lock of {record.service} lost before promotion")
        raise PromotionRefused(f"not promoted: the deployment has {result.detail}")

    async def save_record(self, raw: dict[str, str]) -> None:
        """Keep the final record and the log in S3, beyond Redis TTLs."""
        await keep_ended(self.redis, self.keys, self.storage, raw)
