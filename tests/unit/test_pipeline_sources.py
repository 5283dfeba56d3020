"""The deployer fetches a job's source in either format: the zstd archive of new jobs,
or the tar.gz of jobs ingested before sources were zstd (found when the zstd key is
absent); with neither, the fault propagates and the consumer retries."""

from __future__ import annotations

import io
import tarfile

import pytest

from shared.engine.jobs import Status
from shared.storage.archive import pack
from shared.storage.s3 import ObjectNotFound, source_key
from tests.unit import test_pipeline
from tests.unit.test_pipeline import Env, repository, run, submit

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

# The runner as tests/unit/test_pipeline.py builds it (one place knows how).
settings = test_pipeline.settings
storage = test_pipeline.storage
env = test_pipeline.env


def legacy_tar_gz(files: dict[str, bytes]) -> bytes:
    """A source archive as ingest wrote it before zstd: tarfile, gzip, PAX."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def queued(env: Env, job_id: str) -> None:
    await submit(env, job_id)
    keys = env.store.keys
    await env.store.transition(
        job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue, commit="c0ffee"
    )


async def test_a_job_ingested_before_zstd_is_fetched_from_its_tar_gz(env: Env) -> None:
    await env.storage.put_bytes(
        source_key("job-old", legacy=True),
        legacy_tar_gz({"index.html": b"<h1>old</h1>", "a/b.css": b"b{}", "c.txt": b"c"}),
        mime="application/gzip",
    )
    await queued(env, "job-old")

    outcome, lines = await run(env, "job-old")

    assert outcome.status is Status.LIVE, lines
    assert "buildq: fetched source (3 files, commit c0ffee)" in lines


async def test_the_zstd_source_is_the_one_fetched_when_both_exist(env: Env) -> None:
    source = repository(env.tmp / "repo", {"index.html": "<h1>new</h1>", "x.txt": "x"})
    pack(source, env.tmp / "new.tar.zst", max_files=100, max_bytes=1 << 20)
    await env.storage.put_file(source_key("job-a"), env.tmp / "new.tar.zst")
    await env.storage.put_bytes(
        source_key("job-a", legacy=True),
        legacy_tar_gz({"index.html": b"stale", "1": b"", "2": b"", "3": b""}),
        mime="application/gzip",
    )
    await queued(env, "job-a")

    outcome, lines = await run(env, "job-a")

    assert outcome.status is Status.LIVE, lines
    assert "buildq: fetched source (2 files, commit c0ffee)" in lines


async def test_a_job_without_any_source_archive_is_left_to_the_retry(env: Env) -> None:
    await queued(env, "job-a")

    with pytest.raises(ObjectNotFound):
        await run(env, "job-a")
    assert not (env.tmp / "work" / "job-a").exists()
