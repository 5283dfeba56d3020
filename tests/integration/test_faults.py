"""Fault injection against real processes: no job is lost, none runs twice when it
need not, and each service ends on its newest submission."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shared.cli.embedded import free_port, start_valkey, stop_process
from shared.redis.keys import Keys
from tests.integration.faults import (
    FAST,
    build_repo,
    executions,
    median_ms,
    newest_per_service,
    redis_client,
    submit_many,
    summary,
    wait_all_ended,
)
from tests.integration.helpers import Stack
from tests.integration.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fast_env(bq_env: dict[str, str]) -> dict[str, str]:
    return {**bq_env, **FAST}


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    return logs


def _worker_of(client: object, keys: Keys, pid: int) -> str | None:
    for worker_id in client.zrange(keys.workers, 0, -1):  # type: ignore[attr-defined]
        if client.hget(keys.worker(worker_id), "pid") == str(pid):  # type: ignore[attr-defined]
            return str(worker_id)
    return None


def test_kill_9_of_deployers_at_random_moments_loses_no_job(
    fast_env: dict[str, str], logs_dir: Path, tmp_path: Path, s3_client: object
) -> None:
    keys = Keys(fast_env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_env)
    stack = Stack(fast_env, logs_dir).start(deployers=3, slots=2)
    rng = random.Random(1234)
    kills: list[tuple[float, list[str]]] = []
    try:
        repo = build_repo(tmp_path / "crashy", sleep_s=0.6)
        # In waves, so that builds are in flight at every kill: of a burst of one
        # service's deploys only the newest is built (deployer/staleness.py).
        ids = submit_many(stack, repo, 4, services=3)
        for n in range(8):
            ids += submit_many(stack, repo, 4, services=3)
            time.sleep(rng.uniform(0.4, 1.2))
            victims = [p for p in stack.procs[1:] if p.poll() is None]
            victim = rng.choice(victims)
            worker = _worker_of(client, keys, victim.pid)
            in_flight = client.lrange(keys.active(worker), 0, -1) if worker else []
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            stack.procs.remove(victim)
            kills.append((time.time() * 1000, in_flight))
            stack.add_deployer(2, index=10 + n)
        records = wait_all_ended(client, keys, ids, 180, stack)
    finally:
        stack.stop()
    statuses = Counter(r["status"] for r in records.values())
    lost = [i for i, r in records.items() if r.get("status") is None]
    failed = {i: r["error"] for i, r in records.items() if r["status"] == "failed"}
    assert not lost
    assert set(statuses) <= {"live", "superseded", "failed"}, statuses
    for error in failed.values():
        assert error.startswith("gave up after"), error
    for service, newest in newest_per_service(records).items():
        alias = client.hgetall(keys.site(service))
        if newest["status"] == "live":
            assert alias["id"] == newest["id"], (service, alias, newest)
        live = [r for r in records.values() if r["service"] == service and r["status"] == "live"]
        assert alias["seq"] == str(max(int(r["seq"]) for r in live))
    # Time from a worker's death to each of its in-flight jobs building again.
    recoveries = []
    events = client.xrange(keys.events, "-", "+")
    for killed_at, in_flight in kills:
        for job_id in in_flight:
            later = [
                int(e["at"])
                for _, e in events
                if e.get("id") == job_id
                and e.get("status") == "building"
                and int(e["at"]) > killed_at
            ]
            if later:
                recoveries.append(min(later) - killed_at)
    reruns = sum(1 for i in ids if executions(client, keys, i) > 1)
    summary(
        "kill -9",
        jobs_in=len(ids),
        live=statuses["live"],
        superseded=statuses["superseded"],
        failed=len(failed),
        lost=len(lost),
        kills=len(kills),
        jobs_caught_in_a_kill=sum(len(f) for _, f in kills),
        builds_rerun=reruns,
        median_death_to_rerun_ms=median_ms(recoveries),
    )
    assert recoveries, "no kill caught a job in flight"


def wait_logged(
    log: Path, event: str, proc: subprocess.Popen[bytes], timeout_s: float = 60
) -> None:
    """Wait until ``proc`` has written ``event`` to its ``log``."""
    deadline = time.monotonic() + timeout_s
    while event not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, f"{log.name}: exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{log.name}: no {event} after {timeout_s}s"
        time.sleep(0.05)


def test_rolling_sigterm_restart_loses_nothing_and_runs_nothing_twice(
    fast_env: dict[str, str], logs_dir: Path, tmp_path: Path, s3_client: object
) -> None:
    keys = Keys(fast_env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_env)
    stack = Stack(fast_env, logs_dir).start(deployers=2, slots=2)
    repo = build_repo(tmp_path / "rolling", sleep_s=0.1)
    ids: list[str] = []
    submitter = threading.Thread(
        # One service per job: every job builds (none is stale when taken), so every
        # one of the 100 builds is exposed to the restarts.
        target=lambda: ids.extend(submit_many(stack, repo, 100, services=100))
    )
    restarts = 0
    logs = {1: logs_dir / "deployer-0.log", 2: logs_dir / "deployer-1.log"}
    try:
        submitter.start()
        for round_ in range(2):
            for slot in (1, 2):
                time.sleep(0.8)
                # A deployer still importing has no signal handler yet (SIGTERM would
                # simply end it): restart one that has started taking work.
                wait_logged(logs[slot], "consumer.started", stack.procs[slot])
                old = stack.procs[slot]
                old.send_signal(signal.SIGTERM)
                assert old.wait(30) == 0, "deployer did not drain and exit cleanly"
                index = slot + 10 * (round_ + 1)
                stack.procs[slot] = stack.add_deployer(2, index=index)
                stack.procs.pop()
                logs[slot] = logs_dir / f"deployer-{index}.log"
                restarts += 1
        submitter.join(60)
        records = wait_all_ended(client, keys, ids, 180, stack)
    finally:
        stack.stop()
    assert len(ids) == 100
    statuses = Counter(r["status"] for r in records.values())
    runs = Counter(executions(client, keys, i) for i in ids)
    summary(
        "rolling SIGTERM",
        jobs_in=len(ids),
        restarts=restarts,
        live=statuses["live"],
        superseded=statuses["superseded"],
        lost=100 - sum(statuses.values()),
        ran_twice=sum(v for k, v in runs.items() if k > 1),
    )
    assert set(statuses) == {"live"}, statuses
    assert runs == {1: 100}, f"executions per job: {runs}"
    assert all(r["attempts"] == "1" for r in records.values())


def test_valkey_restart_mid_run_with_aof_completes_every_job(
    fast_env: dict[str, str], logs_dir: Path, tmp_path: Path, s3_client: object
) -> None:
    port = free_port()
    data = tmp_path / "own-valkey"
    log = (tmp_path / "own-valkey.log").open("ab")
    valkey = start_valkey(data, port, log=log)
    env = {**fast_env, "BUILDQ_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    keys = Keys(env["BUILDQ_NAMESPACE"])
    stack = Stack(env, logs_dir).start(deployers=2, slots=2)
    try:
        repo = build_repo(tmp_path / "outage", sleep_s=0.5)
        ids = submit_many(stack, repo, 20, services=4)
        time.sleep(1.0)
        stop_process(valkey)
        down_at = time.monotonic()
        time.sleep(5)
        valkey = start_valkey(data, port, log=log)
        outage_s = time.monotonic() - down_at
        client = redis_client(env)
        records = wait_all_ended(client, keys, ids, 180, stack)
        assert all(p.poll() is None for p in stack.procs), "a daemon crashed"
    finally:
        stack.stop()
        stop_process(valkey)
        log.close()
    statuses = Counter(r["status"] for r in records.values())
    summary(
        "valkey restart",
        jobs_in=len(ids),
        outage_s=round(outage_s, 1),
        live=statuses["live"],
        superseded=statuses["superseded"],
        failed=statuses["failed"],
        retried=sum(1 for r in records.values() if int(r["attempts"]) > 1),
    )
    assert set(statuses) <= {"live", "superseded"}, {
        i: (r["status"], r.get("error")) for i, r in records.items()
    }


def _s3_stack(fast_env: dict[str, str], logs_dir: Path, **extra: str) -> tuple[Stack, TcpProxy]:
    target = int(fast_env["BUILDQ_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = TcpProxy(free_port(), target).restore()
    env = {**fast_env, "BUILDQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", **extra}
    return Stack(env, logs_dir).start(deployers=1, slots=2), proxy


def test_s3_outage_of_5s_is_retried_and_every_job_completes(
    fast_env: dict[str, str], logs_dir: Path, tmp_path: Path, s3_client: object
) -> None:
    keys = Keys(fast_env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_env)
    stack, proxy = _s3_stack(fast_env, logs_dir, BUILDQ_MAX_ATTEMPTS="8", BUILDQ_RETRY_CAP_S="3")
    try:
        repo = build_repo(tmp_path / "s3-blip", sleep_s=0.3)
        ids = submit_many(stack, repo, 10, services=10)  # none stale: all build
        time.sleep(0.5)
        proxy.cut()
        time.sleep(5)
        proxy.restore()
        records = wait_all_ended(client, keys, ids, 120, stack)
    finally:
        stack.stop()
        proxy.cut()
    statuses = Counter(r["status"] for r in records.values())
    retried = sum(
        1 for r in records.values() if int(r["attempts"]) > 1 or int(r["ingest_attempts"]) > 1
    )
    summary(
        "S3 outage 5s",
        jobs_in=len(ids),
        live=statuses["live"],
        superseded=statuses["superseded"],
        failed=statuses["failed"],
        retried=retried,
    )
    assert set(statuses) <= {"live", "superseded"}, {
        i: (r["status"], r.get("error")) for i, r in records.items()
    }
    assert retried > 0, "the outage should have caught some job"


def test_s3_down_past_the_retry_budget_dead_letters_then_retry_revives(
    fast_env: dict[str, str], logs_dir: Path, tmp_path: Path, s3_client: object
) -> None:
    keys = Keys(fast_env["BUILDQ_NAMESPACE"])
    client = redis_client(fast_env)
    stack, proxy = _s3_stack(fast_env, logs_dir, BUILDQ_MAX_ATTEMPTS="2", BUILDQ_RETRY_BASE_S="0.2")
    try:
        proxy.cut()
        repo = build_repo(tmp_path / "s3-down", sleep_s=0.1)
        ids = submit_many(stack, repo, 3, services=1)
        records = wait_all_ended(client, keys, ids, 90, stack)
        for record in records.values():
            assert record["status"] == "failed"
            assert record["dead"] == "1"
            assert record["error"].startswith("gave up after 2 attempts: S3 unreachable")
        assert sorted(client.lrange(keys.dead, 0, -1)) == sorted(ids)
        proxy.restore()
        response = httpx.post(f"{stack.url}/deployments/{ids[-1]}/retry", json={})
        assert response.status_code == 202, response.text
        revived = wait_all_ended(client, keys, ids[-1:], 60, stack)[ids[-1]]
    finally:
        stack.stop()
        proxy.cut()
    assert revived["status"] == "live", revived
    assert ids[-1] not in client.lrange(keys.dead, 0, -1)
    summary("S3 down past budget", jobs_in=3, dead_lettered=3, revived_live=1)


def _build_pids(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def test_cancel_stops_a_running_build_process_group_within_2s(stack: Stack, tmp_path: Path) -> None:
    from tests.integration.helpers import make_repo

    marker = f"{random.randint(100, 999)}.{os.getpid()}"
    command = f"sleep 3{marker} & sleep 4{marker}; mkdir out"
    repo = make_repo(tmp_path / "long", {"buildq.toml": f'[build]\ncommand = "{command}"\n'})
    job_id = stack.deploy(repo, service="long")
    deadline = time.monotonic() + 30
    while len(_build_pids(marker)) < 2:
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    asked = time.monotonic()
    response = httpx.post(f"{stack.url}/deployments/{job_id}/cancel", json={})
    assert response.status_code == 200, response.text
    assert response.json()["was"] == "building"
    while _build_pids(marker):
        assert time.monotonic() - asked < 2.0, f"build still running: {_build_pids(marker)}"
        time.sleep(0.02)
    gone_s = time.monotonic() - asked
    record = stack.wait(job_id)
    assert record["status"] == "cancelled"
    assert stack.site("long").status_code == 404
    assert httpx.post(f"{stack.url}/deployments/{job_id}/cancel", json={}).status_code == 409
    summary("cancel", build_group_gone_s=round(gone_s, 3))
    # The deployer is healthy afterwards.
    quick = make_repo(tmp_path / "after", {"index.html": "after"})
    assert stack.wait(stack.deploy(quick, service="after"))["status"] == "live"
