"""Fleet control, idempotent submission and `buildq doctor` on real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.engine.stages import BUILD
from shared.redis.keys import Keys
from tests.integration.faults import FAST, redis_client, wait_all_ended
from tests.integration.helpers import Stack, make_repo

pytestmark = pytest.mark.integration


@pytest.fixture
def fast_stack(bq_env: dict[str, str], tmp_path: Path, s3_client: object) -> Stack:
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack({**bq_env, **FAST}, logs).start(deployers=2, slots=2)
    yield running  # type: ignore[misc]
    running.stop()


def _wait_queued(client: object, keys: Keys, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while client.hget(keys.job(job_id), "status") != "queued":  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the job never reached the build queue"
        time.sleep(0.05)


def _two_heartbeats_later(client: object, keys: Keys) -> None:
    """Return once every deployer has beaten twice from now: each has then run one
    whole housekeeping pass (beat, fleet refresh, …) that began after this call."""
    c: Any = client
    deployers = [
        w for w in c.zrange(keys.workers, 0, -1) if c.hget(keys.worker(w), "kind") == "deployer"
    ]
    assert deployers, "no deployer is registered"
    for _ in range(2):
        since = {w: c.zscore(keys.workers, w) for w in deployers}
        deadline = time.monotonic() + 30
        while any(c.zscore(keys.workers, w) == since[w] for w in deployers):
            assert time.monotonic() < deadline, "a deployer stopped beating"
            time.sleep(0.02)


def _sleepy_repo(path: Path, sleep_s: float) -> Path:
    command = f"sleep {sleep_s}; mkdir -p out; echo ok > out/index.html"
    return make_repo(path, {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'})


def test_paused_fleet_starts_nothing_and_resume_drains_the_queue(
    fast_stack: Stack, tmp_path: Path
) -> None:
    keys = Keys(fast_stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_stack.env)
    assert httpx.put(f"{fast_stack.url}/fleet", json={"paused": True}).json()["paused"] is True
    repo = make_repo(tmp_path / "paused", {"index.html": "paused"})
    ids = [fast_stack.deploy(repo, service=f"p{n}") for n in range(4)]
    deadline = time.monotonic() + 30
    while client.llen(keys.queue) < 4:
        assert time.monotonic() < deadline, "jobs never reached the queue"
        time.sleep(0.05)
    _two_heartbeats_later(client, keys)  # every deployer had its chance to take one
    for job_id in ids:
        record = client.hgetall(keys.job(job_id))
        assert record["status"] == "queued", record
        assert "p:building:start" not in record
    status = httpx.get(f"{fast_stack.url}/queue").json()
    assert status["paused"] is True
    # Two ingest slots clone in parallel, so jobs reach the build queue in the order
    # their clones finish; all four are pending, none started.
    assert sorted(status["pending"]) == sorted(ids)

    assert httpx.put(f"{fast_stack.url}/fleet", json={"paused": False}).status_code == 200
    records = wait_all_ended(client, keys, ids, 60, fast_stack)
    assert {r["status"] for r in records.values()} == {"live"}


def test_max_concurrency_is_honoured_across_deployer_processes(
    fast_stack: Stack, tmp_path: Path
) -> None:
    keys = Keys(fast_stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_stack.env)
    response = httpx.put(f"{fast_stack.url}/fleet", json={"max_concurrency": 1})
    assert response.json() == {"paused": False, "max_concurrency": 1}
    _two_heartbeats_later(client, keys)  # every deployer has read the cap since
    repo = _sleepy_repo(tmp_path / "capped", 0.4)
    ids = [fast_stack.deploy(repo, service=f"c{n}") for n in range(5)]
    records = wait_all_ended(client, keys, ids, 90, fast_stack)
    assert {r["status"] for r in records.values()} == {"live"}
    spans = [(int(r["p:building:start"]), int(r["p:publishing:end"])) for r in records.values()]
    overlaps = [(a, b) for a, b in combinations(sorted(spans), 2) if b[0] < a[1]]
    assert not overlaps, f"builds overlapped under max_concurrency=1: {overlaps}"
    # The cap held while two deployer processes competed, and only they built.
    registered = client.zrange(keys.workers, 0, -1)
    deployers = {w for w in registered if client.hget(keys.worker(w), "kind") == BUILD.name}
    assert len(deployers) == 2, registered
    assert {r["worker"] for r in records.values()} <= deployers
    lifted = httpx.put(f"{fast_stack.url}/fleet", json={"max_concurrency": None}).json()
    assert lifted["max_concurrency"] is None
    assert httpx.put(f"{fast_stack.url}/fleet", json={"max_concurrency": 0}).status_code == 422


def test_idempotency_key_returns_the_first_job(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "idem", {"index.html": "once"})
    body = {"repo_url": f"file://{repo}", "service": "idem"}
    first = httpx.post(f"{stack.url}/deployments", json=body, headers={"Idempotency-Key": "k-1"})
    again = httpx.post(f"{stack.url}/deployments", json=body, headers={"Idempotency-Key": "k-1"})
    other = httpx.post(f"{stack.url}/deployments", json=body, headers={"Idempotency-Key": "k-2"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"]
    listed = httpx.get(f"{stack.url}/deployments", params={"service": "idem"}).json()
    assert len(listed) == 2


def test_cancel_of_a_queued_job_and_retry_of_a_failed_one(
    fast_stack: Stack, tmp_path: Path
) -> None:
    keys = Keys(fast_stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_stack.env)
    httpx.put(f"{fast_stack.url}/fleet", json={"paused": True})
    repo = make_repo(tmp_path / "q", {"index.html": "q"})
    job_id = fast_stack.deploy(repo, service="queued-cancel")
    _wait_queued(client, keys, job_id)
    response = httpx.post(f"{fast_stack.url}/deployments/{job_id}/cancel", json={})
    assert response.json() == {"id": job_id, "status": "cancelled", "was": "queued"}
    assert client.llen(keys.queue) == 0
    assert httpx.post(f"{fast_stack.url}/deployments/{job_id}/retry", json={}).status_code == 202
    httpx.put(f"{fast_stack.url}/fleet", json={"paused": False})
    assert wait_all_ended(client, keys, [job_id], 60, fast_stack)[job_id]["status"] == "live"
    assert httpx.post(f"{fast_stack.url}/deployments/{job_id}/retry", json={}).status_code == 409
    assert (
        httpx.post(f"{fast_stack.url}/deployments/ffffffffffffffffffff/cancel", json={}).status_code
        == 404
    )


def test_doctor_finds_a_lost_job_and_fix_puts_it_back(fast_stack: Stack, tmp_path: Path) -> None:
    keys = Keys(fast_stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_stack.env)
    httpx.put(f"{fast_stack.url}/fleet", json={"paused": True})
    repo = make_repo(tmp_path / "lost", {"index.html": "found again"})
    job_id = fast_stack.deploy(repo, service="lost")
    _wait_queued(client, keys, job_id)
    client.lrem(keys.queue, 0, job_id)  # the fault: an id vanishes from every list
    client.lpush(keys.dead, "ffffffffffffffffffff")  # and an entry without a job appears

    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli.main", "doctor", *args],
            env=fast_stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    found = doctor()
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"FOUND\tlost\t{job_id}\t" in found.stdout
    assert "FOUND\tleft behind\tffffffffffffffffffff\t" in found.stdout
    fixed = doctor("--fix")
    assert fixed.returncode == 0, fixed.stdout
    assert "2 problem(s), 0 left" in fixed.stdout
    assert doctor().stdout.strip().endswith("\n0 problem(s), 0 left")
    httpx.put(f"{fast_stack.url}/fleet", json={"paused": False})
    assert wait_all_ended(client, keys, [job_id], 60, fast_stack)[job_id]["status"] == "live"
