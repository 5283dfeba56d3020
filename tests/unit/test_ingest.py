"""uploader/ingest.py with a local git repository, moto S3 and fakeredis with Lua: a
started job's repository is cloned, archived to S3 and handed to the build queue;
a repository that cannot be cloned fails the job."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import fakeredis
import pytest

from shared.core.errors import TransientError
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.engine.logs import LogWriter, read_log
from shared.engine.outcome import Outcome
from shared.redis.keys import Keys
from shared.storage.s3 import S3Storage, Storage, make_s3_client, source_key
from tests.unit.test_archive import read_archive
from uploader.clone import CloneTimedOut
from uploader.ingest import Ingest

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

WORKER = "ingest-unit-1"


@pytest.fixture
def settings() -> Settings:
    return load_settings({"BUILDQ_ALLOW_LOCAL_REPOS": "1", "BUILDQ_S3_BUCKET": "unit-ingest"})


@pytest.fixture
async def storage(aws: None, settings: Settings) -> Storage:
    storage = S3Storage(make_s3_client(settings), settings.s3_bucket, concurrency=4)
    await storage.ensure_bucket()
    return storage


# --- the one place that knows how the ingest handler is constructed ---------------


def make_ingest(settings: Settings, store: JobStore, storage: Storage) -> Ingest:
    return Ingest(settings, store.keys, store, storage, anyio.CapacityLimiter(2))


@pytest.fixture
def ingest(settings: Settings, store: JobStore, storage: Storage) -> Ingest:
    return make_ingest(settings, store, storage)


# --- helpers ----------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=unit", "-c", "user.email=unit@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A local repository with one commit on ``main`` and a ``v2`` branch."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "index.html").write_text("<h1>v1</h1>")
    (root / "docs").mkdir()
    (root / "docs" / "about.md").write_text("about")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "v1")
    git(root, "checkout", "-q", "-b", "v2")
    (root / "index.html").write_text("<h1>v2</h1>")
    git(root, "commit", "-q", "-am", "v2")
    git(root, "checkout", "-q", "main")
    return root


async def started(store: JobStore, job_id: str, repo_url: str, ref: str | None = None) -> JobRecord:
    """A submitted job claimed by this ingest worker, as the consumer hands it over."""
    await store.submit(job_id, service="site", repo_url=repo_url, ref=ref)
    keys = store.keys
    claimed = await store.take(keys.ingest, keys.active(WORKER), Status.CLONING, worker=WORKER)
    assert claimed is not None
    record = await store.get(job_id)
    assert record is not None
    return record


async def run(
    ingest: Ingest, redis: fakeredis.FakeAsyncRedis, keys: Keys, record: JobRecord
) -> tuple[Outcome, list[str]]:
    writer = LogWriter(redis, keys, record.id, max_bytes=1 << 20, max_entries=1000)
    outcome = await ingest.run(record, writer)
    await writer.close()
    return outcome, [entry.text for entry in await read_log(redis, keys, record.id)]


async def archived(storage: Storage, tmp_path: Path, job_id: str) -> dict[str, bytes]:
    path = tmp_path / "source.tar.zst"
    await storage.get_to_file(source_key(job_id), path)
    return read_archive(path)


# --- tests ------------------------------------------------------------------------


async def test_a_local_repository_is_cloned_archived_and_queued_for_build(
    ingest: Ingest,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    keys = store.keys
    record = await started(store, "job-a", str(repo))

    outcome, lines = await run(ingest, redis, keys, record)

    head = git(repo, "rev-parse", "HEAD")
    assert outcome.status is Status.QUEUED
    assert outcome.push == keys.queue
    assert outcome.fields["commit"] == head
    files = await archived(storage, repo.parent, "job-a")
    assert files == {"index.html": b"<h1>v1</h1>", "docs/about.md": b"about"}
    after = await store.get("job-a")
    assert after is not None
    assert (after.status, after.commit) == (Status.UPLOADING, head)
    assert f"buildq: cloned commit {head}" in lines
    assert any(line.startswith("buildq: uploaded source (2 files") for line in lines)


async def test_symlinks_are_left_out_with_a_log_line_and_the_source_is_zstd(
    ingest: Ingest,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    (repo / "passwd").symlink_to("/etc/passwd")
    git(repo, "add", "passwd")
    git(repo, "commit", "-q", "-m", "link")
    record = await started(store, "job-a", str(repo))

    outcome, lines = await run(ingest, redis, store.keys, record)

    assert outcome.status is Status.QUEUED
    assert "buildq: skipped symlink 'passwd' (only regular files are archived)" in lines
    assert source_key("job-a").endswith(".tar.zst")
    blob = await storage.read(source_key("job-a"))
    assert blob.body[:4] == b"\x28\xb5\x2f\xfd"
    assert blob.content_type == "application/zstd"
    assert not await storage.exists(source_key("job-a", legacy=True))
    assert set(await archived(storage, repo.parent, "job-a")) == {"index.html", "docs/about.md"}


async def test_a_bad_file_name_fails_the_job_and_uploads_nothing(
    ingest: Ingest,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    (repo / "bad\nname.html").write_text("x")
    git(repo, "add", "--all")
    git(repo, "commit", "-q", "-m", "bad name")
    record = await started(store, "job-a", str(repo))

    outcome, _ = await run(ingest, redis, store.keys, record)

    assert outcome.status is Status.FAILED
    assert "control character" in outcome.fields["error"]
    assert not await storage.exists(source_key("job-a"))


async def test_the_requested_ref_is_the_one_archived(
    ingest: Ingest,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    record = await started(store, "job-a", f"file://{repo}", ref="v2")

    outcome, _ = await run(ingest, redis, store.keys, record)

    assert outcome.status is Status.QUEUED
    assert outcome.fields["commit"] == git(repo, "rev-parse", "v2")
    files = await archived(storage, repo.parent, "job-a")
    assert files["index.html"] == b"<h1>v2</h1>"


async def test_an_unknown_ref_fails_the_job_without_a_retry(
    ingest: Ingest,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    record = await started(store, "job-a", str(repo), ref="no-such-branch")

    outcome, _ = await run(ingest, redis, store.keys, record)

    assert outcome.status is Status.FAILED
    assert outcome.fields["error"]
    assert outcome.push is None
    assert not await storage.exists(source_key("job-a"))


async def test_a_clone_that_outlives_its_timeout_is_transient_and_counts_an_attempt(
    settings: Settings,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    # A slow or hanging remote is retried with backoff by the consumer (its class
    # says so), using up ingest attempts until the job is dead-lettered.
    slow = load_settings(
        {"BUILDQ_ALLOW_LOCAL_REPOS": "1", "BUILDQ_S3_BUCKET": settings.s3_bucket},
        clone_timeout_s=0.001,
    )
    record = await started(store, "job-a", str(repo))

    with pytest.raises(CloneTimedOut, match=r"timed out after 0\.001s") as raised:
        await run(make_ingest(slow, store, storage), redis, store.keys, record)

    assert isinstance(raised.value, TransientError)
    assert not await storage.exists(source_key("job-a"))


async def test_a_missing_local_repository_fails_the_job(
    ingest: Ingest,
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    storage: Storage,
    tmp_path: Path,
) -> None:
    record = await started(store, "job-a", str(tmp_path / "nowhere"))

    outcome, _ = await run(ingest, redis, store.keys, record)

    assert outcome.status is Status.FAILED
    assert "does not exist" in outcome.fields["error"]
    assert not await storage.exists(source_key("job-a"))


async def test_local_repositories_are_refused_unless_allowed(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    storage: Storage,
    repo: Path,
) -> None:
    strict = make_ingest(load_settings({}), store, storage)
    record = await started(store, "job-a", str(repo))

    outcome, _ = await run(strict, redis, keys, record)

    assert outcome.status is Status.FAILED
    assert "local repositories are not allowed" in outcome.fields["error"]
