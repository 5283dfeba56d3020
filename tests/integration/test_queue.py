"""Queue guarantees on a real valkey-server: FIFO order and exactly-once claims."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as redis_sync

from shared.core.settings import Settings
from shared.engine.jobs import JobStore, Status, new_job_id
from shared.engine.queue import Queue
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from shared.storage.archive import pack
from shared.storage.s3 import source_key
from tests.integration.helpers import Stack, make_repo, stop

pytestmark = pytest.mark.integration


@pytest.mark.anyio
async def test_queue_claims_oldest_first_and_keeps_claimed_ids_in_active_list(
    bq_settings: Settings,
) -> None:
    keys = Keys(bq_settings.namespace)
    redis = make_redis(bq_settings, blocking=True)
    queue = Queue(redis, keys.queue, keys.active("w1"))
    try:
        await queue.push("a")
        await queue.push("b", "c")
        assert await queue.pending() == ["a", "b", "c"]
        assert await queue.take(1) == "a"
        assert await queue.in_flight() == ["a"]
        assert await queue.take(1) == "b"
        assert await queue.in_flight() == ["b", "a"]
        assert await queue.ack("a") is True
        assert await queue.in_flight() == ["b"]
        assert await queue.length() == 1

        # A blocked consumer is woken by the push itself (no polling).
        got: list[str | None] = []

        async def claim_when_pushed() -> None:
            got.append(await queue.take(5))

        await queue.take(1)  # drain "c"
        async with anyio.create_task_group() as tg:
            tg.start_soon(claim_when_pushed)
            await anyio.sleep(0.05)
            other = make_redis(bq_settings)
            await Queue(other, keys.queue, "").push("d")
            await other.aclose()
        assert got == ["d"]
        assert await queue.take(0.1) is None
    finally:
        await redis.aclose()


def test_one_deployer_processes_100_jobs_in_submission_order(
    bq_env: dict[str, str], bq_settings: Settings, tmp_path: Path, s3_client: Any
) -> None:
    repo = make_repo(tmp_path / "fifo", {"index.html": "fifo"})
    archive = tmp_path / "src.tar.gz"
    pack(repo, archive, max_files=10, max_bytes=10_000)
    keys = Keys(bq_settings.namespace)
    ids = [new_job_id() for _ in range(100)]

    async def enqueue() -> None:
        redis = make_redis(bq_settings)
        store = JobStore(redis, keys, bq_settings)
        for job_id in ids:
            s3_client.upload_file(str(archive), bq_settings.s3_bucket, source_key(job_id))
            await store.submit(job_id, service="fifo", repo_url=f"file://{repo}")
            await store.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue)
        await redis.aclose()

    anyio.run(enqueue)
    logs = tmp_path / "logs"
    logs.mkdir()
    deployer = Stack(bq_env, logs).add_deployer(slots=1)
    client = redis_sync.Redis.from_url(bq_settings.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ended = sum(1 for i in ids if client.hexists(keys.job(i), "ended_at"))
            if ended == len(ids):
                break
            assert deployer.poll() is None, (logs / "deployer-0.log").read_text()[-3000:]
            time.sleep(0.1)
        events = client.xrange(keys.events, "-", "+")
        started = [e["id"] for _, e in events if e.get("status") == "building"]
        statuses = Counter(client.hget(keys.job(i), "status") for i in ids)
    finally:
        stop(deployer)
        client.close()
    assert started == ids
    assert statuses == {"live": 100}


def test_two_processes_of_four_consumers_claim_each_of_1000_ids_exactly_once(
    bq_settings: Settings, tmp_path: Path
) -> None:
    keys = Keys(bq_settings.namespace)
    ids = [f"job-{n:04d}" for n in range(1000)]
    client = redis_sync.Redis.from_url(bq_settings.redis_url, decode_responses=True)
    procs = []
    for n in range(2):
        argv = [
            sys.executable,
            "-m",
            "tests.integration.drain_worker",
            bq_settings.redis_url,
            keys.queue,
            keys.active(f"proc{n}"),
            "4",
            str(tmp_path / f"out{n}.txt"),
        ]
        procs.append(subprocess.Popen(argv))
    try:
        # Both processes' consumers are connected and blocked before any id exists.
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"out{n}.txt.ready").exists() for n in range(2)):
            assert time.monotonic() < deadline, "consumers did not start"
            assert all(p.poll() is None for p in procs)
            time.sleep(0.02)
        for start in range(0, len(ids), 10):
            client.lpush(keys.queue, *ids[start : start + 10])
        for proc in procs:
            assert proc.wait(60) == 0
    finally:
        for proc in procs:
            stop(proc)
    consumed = [
        line
        for n in range(2)
        for line in (tmp_path / f"out{n}.txt").read_text().splitlines()
        if line
    ]
    per_process = [len((tmp_path / f"out{n}.txt").read_text().splitlines()) for n in range(2)]
    counts = Counter(consumed)
    assert sorted(counts) == ids, "an id was lost"
    assert max(counts.values()) == 1, "an id was consumed twice"
    assert all(n > 0 for n in per_process), per_process
    assert client.llen(keys.queue) == 0
    assert client.llen(keys.active("proc0")) == 0
    assert client.llen(keys.active("proc1")) == 0
    client.close()
