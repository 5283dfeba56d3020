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
from shared.engine.queue import Queue, pending, read_counts
from shared.engine.stages import BUILD
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from shared.storage.archive import pack
from shared.storage.s3 import source_key
from tests.integration.helpers import Stack, make_repo, stop

pytestmark = pytest.mark.integration


@pytest.mark.anyio
async def test_a_blocked_take_is_woken_by_the_push_and_starts_the_job_before_replying(
    bq_settings: Settings,
) -> None:
    keys = Keys(bq_settings.namespace)
    redis = make_redis(bq_settings, blocking=True)
    other = make_redis(bq_settings)
    producer = JobStore(other, keys, bq_settings)
    queue = Queue(JobStore(redis, keys, bq_settings), BUILD, keys.active("w1"))

    async def push(job_id: str) -> None:
        await producer.submit(job_id, service="site", repo_url="https://h/o/r")
        await producer.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue)

    try:
        for job_id in ("a", "b", "c"):
            await push(job_id)
        assert await pending(other, keys.queue) == ["a", "b", "c"]
        for job_id in ("a", "b"):
            taken = await queue.wait(1)
            assert taken.claimed is not None
            assert (taken.claimed.job_id, taken.claimed.started.record["status"]) == (
                job_id,
                "building",
            )
        assert await other.lrange(keys.active("w1"), 0, -1) == ["b", "a"]
        assert (await read_counts(other, keys)).build == 1

        # A blocked take is woken by the push itself (no polling), and the job is
        # started by the script queued behind BLMOVE before the client hears back.
        got: list[str | None] = []
        blocked = anyio.Event()

        async def take_when_pushed() -> None:
            blocked.set()
            taken = await queue.wait(5)
            got.append(None if taken.claimed is None else taken.claimed.job_id)

        await queue.wait(1)  # "c"
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_when_pushed)
            await blocked.wait()
            for _ in range(1000):  # until the server has the take blocked (≤ 5 s)
                if int((await other.info("clients"))["blocked_clients"]) >= 1:
                    break
                await anyio.sleep(0.005)
            await push("d")
        assert got == ["d"]
        record = await producer.get("d")
        assert record is not None
        assert record.status is Status.BUILDING
        started, queued = record.phases["building"].start, record.phases["queued"].start
        assert started >= queued  # stamped when it was started, not when the take was sent
        assert (await queue.wait(0.1)).claimed is None
    finally:
        await redis.aclose()
        await other.aclose()


@pytest.mark.anyio
async def test_a_take_after_the_server_lost_its_scripts_still_starts_the_job(
    bq_settings: Settings,
) -> None:
    keys = Keys(bq_settings.namespace)
    redis = make_redis(bq_settings, blocking=True)
    other = make_redis(bq_settings)
    producer = JobStore(other, keys, bq_settings)
    queue = Queue(JobStore(redis, keys, bq_settings), BUILD, keys.active("w1"))
    try:
        await producer.submit("a", service="site", repo_url="https://h/o/r")
        await producer.transition("a", Status.QUEUED, ack=keys.ingest, push=keys.queue)
        await other.script_flush()  # as after a restart of the server

        taken = await queue.wait(1)

        assert taken.claimed is not None
        assert taken.claimed.job_id == "a"
        assert taken.claimed.started.changed
        assert await other.lrange(keys.active("w1"), 0, -1) == ["a"]
    finally:
        await redis.aclose()
        await other.aclose()


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
        for n, job_id in enumerate(ids):
            s3_client.upload_file(str(archive), bq_settings.s3_bucket, source_key(job_id))
            # A service each: of one service's queued deploys only the newest builds
            # (deployer/staleness.py); one submitter, so the order is plain FIFO.
            await store.submit(job_id, service=f"fifo-{n:03d}", repo_url=f"file://{repo}")
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


def test_two_processes_of_four_slots_run_each_of_1000_jobs_exactly_once(
    bq_settings: Settings, tmp_path: Path
) -> None:
    # The production take path: buildq's Consumer in two processes (take.lua while
    # the queue has work, BLMOVE while it is empty), jobs submitted while they wait.
    keys = Keys(bq_settings.namespace)
    client = redis_sync.Redis.from_url(bq_settings.redis_url, decode_responses=True)
    procs = []
    for n in range(2):
        argv = [
            sys.executable,
            "-m",
            "tests.integration.drain_worker",
            bq_settings.redis_url,
            bq_settings.namespace,
            "4",
            str(tmp_path / f"out{n}.txt"),
        ]
        procs.append(subprocess.Popen(argv))
    try:
        # Every slot of both processes is blocked in BLMOVE before any job exists.
        deadline = time.monotonic() + 30
        while int(client.info("clients")["blocked_clients"]) < 8:
            assert time.monotonic() < deadline, "the consumers did not start"
            assert all(p.poll() is None for p in procs)
            time.sleep(0.02)

        async def submit_all() -> list[str]:
            redis = make_redis(bq_settings)
            store = JobStore(redis, keys, bq_settings)
            ids = []
            for n in range(1000):
                job_id = new_job_id()
                await store.submit(job_id, service=f"svc{n % 7}", repo_url="https://h/o/r")
                ids.append(job_id)
            await redis.aclose()
            return ids

        ids = anyio.run(submit_all)
        for proc in procs:
            assert proc.wait(120) == 0
        records = {i: client.hgetall(keys.job(i)) for i in ids}
    finally:
        for proc in procs:
            stop(proc)
        client.close()
    runs = [(tmp_path / f"out{n}.txt").read_text().splitlines() for n in range(2)]
    counts = Counter(line for lines in runs for line in lines if line)
    assert sorted(counts) == sorted(ids), "a job was lost"
    assert max(counts.values()) == 1, "a job ran twice"
    assert all(len(lines) > 0 for lines in runs), [len(lines) for lines in runs]
    assert {r["status"] for r in records.values()} == {"live"}
    assert {r["ingest_attempts"] for r in records.values()} == {"1"}
