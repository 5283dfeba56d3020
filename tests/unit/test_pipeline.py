"""deployer/pipeline.py's JobRunner with moto S3, fakeredis with Lua and a real tiny
build command under the ``process`` sandbox: fetch the source archive, build,
publish, promote; a failing build, a superseded job, a cancelled job and a locked
service each end the way the README says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import fakeredis
import pytest

from deployer.pipeline import RECHECK_MAX_S, JobRunner, recheck_delay_s
from deployer.staleness import Decision, StaleVerdict
from shared.coord.lockbook import LockBook
from shared.coord.locks import DeployLock
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.engine.logs import LogWriter, read_log
from shared.engine.outcome import Outcome
from shared.redis.keys import Keys
from shared.storage.archive import pack
from shared.storage.manifest import Manifest, blob_key, manifest_key
from shared.storage.s3 import (
    ObjectNotFound,
    S3Storage,
    Storage,
    alias_key,
    make_s3_client,
    source_key,
)

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

WORKER = "deployer-unit-1"
BUILD_TOML = """
[build]
command = "mkdir -p out && printf 'built %s' \\"$BUILDQ_SERVICE\\" > out/index.html"
output = "out"
"""


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        {
            "BUILDQ_BUILD_SANDBOX": "process",
            "BUILDQ_BUILD_NETWORK": "on",
            "BUILDQ_LOCK_WAIT_S": "0",
            "BUILDQ_S3_BUCKET": "unit-pipeline",
        }
    )


@pytest.fixture
async def storage(aws: None, settings: Settings) -> Storage:
    storage = S3Storage(make_s3_client(settings), settings.s3_bucket, concurrency=4)
    await storage.ensure_bucket()
    return storage


# --- the one place that knows how a runner is constructed -------------------------


@dataclass
class Env:
    """A deployer's runner and everything it talks to."""

    runner: JobRunner
    store: JobStore
    storage: Storage
    redis: fakeredis.FakeAsyncRedis
    keys: Keys
    tmp: Path


@pytest.fixture
def env(
    settings: Settings,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    tmp_path: Path,
) -> Env:
    runner = JobRunner(
        settings=settings,
        keys=store.keys,
        redis=redis,
        store=store,
        storage=storage,
        work_root=tmp_path / "work",
        owner=WORKER,
    )
    return Env(runner, store, storage, redis, store.keys, tmp_path)


# --- helpers ----------------------------------------------------------------------


def repository(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


async def submit(env: Env, job_id: str, **kw: Any) -> None:
    await env.store.submit(job_id, service="site", repo_url="https://h/org/site", **kw)


async def ingested(env: Env, job_id: str, source: Path) -> None:
    """What the ingest stage leaves: the source archive in S3 and the id queued."""
    store, storage = env.store, env.storage
    archive = env.tmp / f"{job_id}.tar.gz"
    pack(source, archive, max_files=1000, max_bytes=10 << 20)
    await storage.put_file(source_key(job_id), archive, mime="application/gzip")
    keys = store.keys
    await store.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue, commit="c0ffee")


async def started(env: Env, job_id: str) -> JobRecord:
    """The job claimed by this deployer, as the consumer hands it to the runner."""
    store, keys = env.store, env.keys
    claimed = await store.take(keys.queue, keys.active(WORKER), Status.BUILDING, worker=WORKER)
    assert claimed is not None
    assert claimed.job_id == job_id
    record = await store.get(job_id)
    assert record is not None
    return record


async def claimed_with(env: Env, job_id: str, files: dict[str, str]) -> JobRecord:
    """A job whose source is ``files``: submitted, ingested and claimed by this deployer."""
    await submit(env, job_id)
    await ingested(env, job_id, repository(env.tmp / "repo", files))
    return await started(env, job_id)


async def run(env: Env, job_id: str) -> tuple[Outcome, list[str]]:
    record = await started(env, job_id)
    writer = LogWriter(env.redis, env.keys, job_id, max_bytes=1 << 20, max_entries=1000)
    outcome = await env.runner.run(record, writer)
    await writer.close()
    return outcome, [entry.text for entry in await read_log(env.redis, env.keys, job_id)]


async def text(env: Env, key: str) -> str:
    data, _ = await env.storage.get(key)
    return data.decode()


async def published(env: Env, job_id: str, rel: str) -> str:
    """A published file's text, through the deployment's manifest."""
    manifest = Manifest.decode((await env.storage.get(manifest_key(job_id)))[0])
    return await text(env, blob_key(manifest.files[rel].sha256))


# --- tests ------------------------------------------------------------------------


async def test_a_job_is_fetched_built_published_and_promoted(env: Env) -> None:
    source = repository(env.tmp / "repo", {"buildq.toml": BUILD_TOML, "README.md": "hi"})
    await submit(env, "job-a")
    await ingested(env, "job-a", source)

    outcome, lines = await run(env, "job-a")

    assert outcome.status is Status.LIVE
    assert outcome.fields["url"].startswith("http://site.")
    assert await published(env, "job-a", "index.html") == "built site"
    assert json.loads(await text(env, alias_key("site")))["id"] == "job-a"
    assert await env.redis.hget(env.keys.site("site"), "id") == "job-a"
    record = await env.store.get("job-a")
    assert record is not None
    assert record.status is Status.PUBLISHING  # the consumer makes the final move
    assert any(line.startswith("buildq: fetched source (2 files") for line in lines)
    assert any(line.startswith("buildq: build from buildq.toml: ") for line in lines)
    assert any(line.startswith("buildq: published 1 files") for line in lines)
    assert "buildq: site now serves job-a" in lines
    assert not (env.tmp / "work" / "job-a").exists()


async def test_a_repository_without_a_build_is_published_as_is(env: Env) -> None:
    source = repository(env.tmp / "repo", {"index.html": "<h1>static</h1>"})
    await submit(env, "job-a")
    await ingested(env, "job-a", source)

    outcome, lines = await run(env, "job-a")

    assert outcome.status is Status.LIVE
    assert await published(env, "job-a", "index.html") == "<h1>static</h1>"
    assert "buildq: no build configured; publishing the repository as is" in lines


async def test_a_failing_build_fails_the_job_and_publishes_nothing(env: Env) -> None:
    toml = '[build]\ncommand = "echo compiling; echo broken >&2; exit 3"\noutput = "out"\n'
    source = repository(env.tmp / "repo", {"buildq.toml": toml})
    await submit(env, "job-a")
    await ingested(env, "job-a", source)

    outcome, lines = await run(env, "job-a")

    assert outcome.status is Status.FAILED
    assert outcome.fields["error"] == "build exited with status 3"
    assert "compiling" in lines
    assert not await env.storage.exists(manifest_key("job-a"))
    with pytest.raises(ObjectNotFound):
        await env.storage.get(alias_key("site"))
    assert await env.redis.hget(env.keys.site("site"), "id") is None
    assert not (env.tmp / "work" / "job-a").exists()


async def test_a_build_without_its_output_directory_fails_the_job(env: Env) -> None:
    toml = '[build]\ncommand = "true"\noutput = "dist"\n'
    source = repository(env.tmp / "repo", {"buildq.toml": toml})
    await submit(env, "job-a")
    await ingested(env, "job-a", source)

    outcome, _ = await run(env, "job-a")

    assert outcome.status is Status.FAILED
    assert "no output directory" in outcome.fields["error"]
    assert await env.redis.hget(env.keys.site("site"), "id") is None


async def test_a_build_override_from_the_request_runs_with_its_command_hidden(env: Env) -> None:
    source = repository(env.tmp / "repo", {"buildq.toml": BUILD_TOML})
    build = {
        "command": 'mkdir -p public && printf "$GREETING" > public/index.html',
        "output": "public",
        "env": {"GREETING": "from the request"},
    }
    await submit(env, "job-a", build=build)
    await ingested(env, "job-a", source)

    outcome, lines = await run(env, "job-a")

    assert outcome.status is Status.LIVE
    assert await published(env, "job-a", "index.html") == "from the request"
    assert "buildq: build from request (command hidden)" in lines
    assert not any("GREETING" in line or "printf" in line for line in lines)


async def test_an_older_submission_finishing_after_a_newer_one_is_superseded(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = repository(env.tmp / "repo", {"index.html": "v"})
    await submit(env, "job-old")
    await submit(env, "job-new")
    await ingested(env, "job-new", source)
    newer, _ = await run(env, "job-new")
    await env.store.transition("job-new", newer.status, ack=env.keys.active(WORKER))
    await ingested(env, "job-old", source)

    async def checked_before_job_new_went_live(record: JobRecord) -> Decision:
        return Decision(StaleVerdict.BUILD)  # so only promotion can refuse it

    monkeypatch.setattr(env.runner.staleness, "check", checked_before_job_new_went_live)

    older, lines = await run(env, "job-old")

    assert newer.status is Status.LIVE
    assert older.status is Status.SUPERSEDED
    assert "job-old" in older.fields["url"]
    assert await env.redis.hget(env.keys.site("site"), "id") == "job-new"
    assert json.loads(await text(env, alias_key("site")))["id"] == "job-new"
    assert any(line.startswith("buildq: not promoted: submission ") for line in lines)


async def test_a_job_cancelled_before_promotion_never_goes_live(env: Env) -> None:
    record = await claimed_with(env, "job-a", {"index.html": "v"})
    await env.store.cancel("job-a", "cancelled while building")
    writer = LogWriter(env.redis, env.keys, "job-a", max_bytes=1 << 20, max_entries=1000)

    outcome = await env.runner.run(record, writer)

    assert outcome.status is Status.FAILED
    assert outcome.fields["error"].startswith("not promoted: ")
    assert await env.redis.hget(env.keys.site("site"), "id") is None


async def test_a_service_locked_by_someone_else_defers_the_job_as_waiting(
    env: Env, settings: Settings
) -> None:
    source = repository(env.tmp / "repo", {"index.html": "v"})
    await submit(env, "job-a")
    await ingested(env, "job-a", source)
    alice = DeployLock(env.redis, env.keys, events_max=100, owner="alice", ttl_ms=60_000)
    async with alice.holding("site", reason="migrating the database"):
        outcome, lines = await run(env, "job-a")

    assert outcome.status is Status.WAITING
    assert outcome.delay_s == settings.lock_recheck_s
    assert outcome.fields["holder"] == "alice (migrating the database)"
    assert "buildq: site is locked by alice (migrating the database); waiting" in lines
    assert await env.redis.hget(env.keys.site("site"), "id") is None


async def test_a_job_that_waits_past_the_lock_max_wait_fails_naming_the_holder(
    env: Env, settings: Settings, clock: FakeClock
) -> None:
    record = await claimed_with(env, "job-a", {"index.html": "v"})
    writer = LogWriter(env.redis, env.keys, "job-a", max_bytes=1 << 20, max_entries=1000)
    alice = DeployLock(env.redis, env.keys, events_max=100, owner="alice", ttl_ms=60_000)
    async with alice.holding("site", reason="migrating the database"):
        first = await env.runner.run(record, writer)
        since = int(first.fields["waiting_since"])
        clock.now_s += 60  # a recheck a minute later keeps the first time, says nothing new
        again = await env.runner.run(record.model_copy(update={"waiting_since": since}), writer)
        clock.now_s += settings.lock_max_wait_s
        last = await env.runner.run(record.model_copy(update={"waiting_since": since}), writer)
    await writer.close()
    lines = [entry.text for entry in await read_log(env.redis, env.keys, "job-a")]

    assert since == int(clock.now_s * 1000) - int((60 + settings.lock_max_wait_s) * 1000)
    assert again.status is Status.WAITING
    assert again.fields["waiting_since"] == str(since)
    assert sum("is locked by alice" in line for line in lines) == 1
    assert last.status is Status.FAILED
    assert last.fields["error"] == (
        f"gave up after waiting {60 + settings.lock_max_wait_s:.0f}s for the deploy lock "
        "of site, held by alice (migrating the database)"
    )


def patient_runner(env: Env, settings: Settings) -> JobRunner:
    """A runner that would wait 30 s in its slot for the lock at a first look."""
    return JobRunner(
        settings=settings.model_copy(update={"lock_wait_s": 30.0}),
        keys=env.keys,
        redis=env.redis,
        store=env.store,
        storage=env.storage,
        work_root=env.tmp / "work",
        owner=WORKER,
    )


@pytest.mark.parametrize("holder", ["a person", "a deploy"])
async def test_a_recheck_does_not_wait_in_its_slot_and_sleeps_longer_as_it_waits(
    env: Env, settings: Settings, clock: FakeClock, holder: str
) -> None:
    record = await claimed_with(env, "job-a", {"index.html": "v"})
    if holder == "a person":
        book = LockBook(env.redis, env.keys, events_max=100)
        await book.acquire_manual("site", owner="ada", ttl_ms=3_600_000, reason="release freeze")
        expected = "ada (release freeze)"
    else:
        other = DeployLock(env.redis, env.keys, events_max=100, owner="deployer-2")
        await other.lock("site", ttl_ms=60_000, reason="deploying job-0")
        expected = "deployer-2 (deploying job-0)"
    writer = LogWriter(env.redis, env.keys, "job-a", max_bytes=1 << 20, max_entries=1000)
    since = int(clock.now_s * 1000) - 120_000  # it has waited two minutes
    with anyio.fail_after(10):
        again = await patient_runner(env, settings).run(
            record.model_copy(update={"waiting_since": since}), writer
        )
    await writer.close()

    assert again.status is Status.WAITING
    assert again.fields == {"holder": expected, "waiting_since": str(since)}
    assert again.delay_s == RECHECK_MAX_S  # 120 s / 10, capped
    assert await env.redis.smembers(env.keys.lock_jobs("site")) == {"job-a"}
    lines = [e.text for e in await read_log(env.redis, env.keys, "job-a") if e.kind == "line"]
    assert lines == []  # "locked by" was said at the first look, not again


async def test_the_release_that_frees_the_lock_makes_the_waiting_jobs_due_at_once(
    env: Env, clock: FakeClock
) -> None:
    keys = env.keys
    holder = DeployLock(env.redis, keys, events_max=100, owner="deployer-2", clock=clock)
    lease = await holder.lock("site", ttl_ms=60_000)
    await env.redis.sadd(keys.lock_jobs("site"), "job-a", "job-gone")
    far = int(clock.now_s * 1000) + 600_000
    await env.redis.zadd(keys.delayed, {"job-a": far, "job-retry": far})

    await holder.release(lease)

    now = int(clock.now_s * 1000)
    assert await env.redis.zscore(keys.delayed, "job-a") == now  # due: the next tick
    assert await env.redis.zscore(keys.delayed, "job-retry") == far  # not waiting for it
    assert await env.redis.zscore(keys.delayed, "job-gone") is None  # XX: never added
    assert not await env.redis.exists(keys.lock_jobs("site"))


def test_a_waiting_job_sleeps_longer_the_longer_it_has_waited() -> None:
    assert [recheck_delay_s(w, 1.0) for w in (0, 5, 40, 100, 3600)] == [
        1.0,
        1.0,
        4.0,
        RECHECK_MAX_S,
        RECHECK_MAX_S,
    ]
    assert recheck_delay_s(3600, 30.0) == 30.0  # never below the setting
