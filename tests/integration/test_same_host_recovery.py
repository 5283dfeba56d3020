"""Same-host recovery on real processes: a deployer killed with ``kill -9`` mid-build
gives its job back as soon as a worker of the same host sees its pid gone, with a
stale-worker timeout (300 s) that this test ends long before reaching."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis as redis_sync

from shared.redis.keys import Keys
from tests.integration.faults import build_repo, executions, redis_client
from tests.integration.helpers import Stack

pytestmark = pytest.mark.integration

STALE_S = "300"  # only same-host recovery can bring the job back within this test


def wait_for(
    client: redis_sync.Redis, key: str, timeout_s: float, **expected: str
) -> dict[str, str]:
    """The hash at ``key`` once its fields are ``expected`` (tests may poll)."""
    deadline = time.monotonic() + timeout_s
    record: dict[str, str] = {}
    while time.monotonic() < deadline:
        record = client.hgetall(key)
        if all(record.get(name) == value for name, value in expected.items()):
            return record
        time.sleep(0.05)
    raise AssertionError(f"{key} is not {expected} within {timeout_s}s: {record}")


def wait_building(client: redis_sync.Redis, keys: Keys, job_id: str, runs: int) -> dict[str, str]:
    """The record once the job is building and its build has started ``runs`` times."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = wait_for(client, keys.job(job_id), 60, status="building")
        if executions(client, keys, job_id) >= runs:
            return record
        time.sleep(0.05)
    raise AssertionError(f"the build of {job_id} did not start {runs} times")


def test_a_deployer_killed_mid_build_gives_its_job_to_the_next_deployer_of_its_host(
    bq_env: dict[str, str], tmp_path: Path, s3_client: object
) -> None:
    env = {**bq_env, "BUILDQ_WORKER_STALE_S": STALE_S}
    keys = Keys(env["BUILDQ_NAMESPACE"])
    client = redis_client(env)
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env, logs).start(deployers=1, slots=2)
    try:
        repo = build_repo(tmp_path / "repo", sleep_s=3)
        job_id = stack.deploy(repo, service="site")
        first = wait_building(client, keys, job_id, runs=1)
        victim = stack.procs[1]
        dead_worker = first["worker"]
        assert client.hget(keys.worker(dead_worker), "pid") == str(victim.pid)

        victim.kill()  # SIGKILL: no drain, no unregister, its job stays in its active list
        victim.wait()
        stack.procs.remove(victim)
        left_behind = Path(env["BUILDQ_WORK_DIR"]) / dead_worker
        assert (left_behind / job_id / "src").is_dir()  # its checkout, mid-build
        stack.add_deployer(2, index=2)

        again = wait_building(client, keys, job_id, runs=2)
        record = stack.wait(job_id, 60)
        job_log = stack.logs_text(job_id)
        lock_events = [
            e for _, e in client.xrange(keys.events, "-", "+") if e.get("kind") == "lock"
        ]
    finally:
        stack.stop()
    assert again["worker"] != dead_worker
    assert again["attempts"] == "2"
    assert record["status"] == "live", record
    assert f"worker {dead_worker} (pid {victim.pid} on this host) is gone" in job_log
    # The new deployer removed the killed one's work directory (source, build output).
    assert not left_behind.exists()
    swept = [
        line
        for line in (logs / "deployer-2.log").read_text().splitlines()
        if "workdirs.swept" in line
    ]
    assert len(swept) == 1, swept
    assert dead_worker in swept[0]
    assert "stopped heartbeating" not in job_log
    assert executions(client, keys, job_id) == 2
    # Its deploy lock went to the next deployer at once, not when its TTL ran out.
    # (A waiter already in line is handed the lock by that same call: 'locked', by it.)
    released = [
        e
        for e in lock_events
        if e.get("by") == f"recovery:{dead_worker}" and e.get("action") != "locked"
    ]
    assert [(e["service"], e["owner"]) for e in released] == [("site", dead_worker)]
    assert client.zscore(keys.workers, dead_worker) is None
    assert not client.exists(keys.worker(dead_worker), keys.active(dead_worker))
