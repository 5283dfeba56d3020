"""Redis loses everything mid-run (FLUSHALL on its own valkey-server), and
``buildq doctor --recover`` brings the deployment back from S3: the live site
still serves, every accepted job still ends live or failed with a reason, no site
regresses, the counters move above what S3 recorded, and a new deploy of the old
service goes live (not "superseded")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from shared.cli.embedded import free_port, start_valkey, stop_process
from shared.redis.keys import Keys
from tests.integration.faults import FAST, redis_client
from tests.integration.helpers import Stack, make_env, make_repo, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def lossy_stack(tmp_path: Path, s3_url: str) -> Iterator[Stack]:
    """An uploader and one deployer on a valkey-server of their own: FLUSHALL there
    wipes nobody else's data."""
    port = free_port()
    with (tmp_path / "valkey.log").open("ab") as log:
        server = start_valkey(tmp_path / "valkey", port, appendonly=False, log=log)
    env = make_env(f"redis://127.0.0.1:{port}/0", s3_url, tmp_path, **FAST)
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(
        Bucket=env["BUILDQ_S3_BUCKET"]
    )
    try:
        with running_stack(env, tmp_path) as stack:
            yield stack
    finally:
        stop_process(server)


def site_repo(path: Path, text: str) -> Path:
    return make_repo(path, {"index.html": f"<p>{text}</p>"})


def set_paused(stack: Stack, paused: bool) -> None:
    response = httpx.put(f"{stack.url}/fleet", json={"paused": paused}, headers=stack.auth)
    assert response.status_code == 200, response.text


def deployers_beat_twice(stack: Stack, keys: Keys) -> None:
    """Return once every worker has beaten twice from now: each has then run a whole
    housekeeping pass (which reads the fleet state) that began after this call."""
    client = redis_client(stack.env)
    deadline = time.monotonic() + 30
    for _ in range(2):
        since = dict(client.zrange(keys.workers, 0, -1, withscores=True))
        while not since or any(client.zscore(keys.workers, w) == s for w, s in since.items()):
            assert time.monotonic() < deadline, "the workers stopped beating"
            time.sleep(0.05)
            since = since or dict(client.zrange(keys.workers, 0, -1, withscores=True))


def wait_status(
    stack: Stack, job_id: str, statuses: set[str], timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = httpx.get(f"{stack.url}/deployments/{job_id}", headers=stack.auth).json()
        if record.get("status") in statuses:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {record}")


def recover(stack: Stack) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "doctor", "--recover", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_flushall_then_recover_loses_no_job_and_no_site_regresses(
    lossy_stack: Stack, tmp_path: Path
) -> None:
    stack = lossy_stack
    keys = Keys(stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(stack.env)
    v1 = stack.deploy(site_repo(tmp_path / "v1", "v1"), service="alpha")
    assert stack.wait(v1)["status"] == "live"
    assert "v1" in stack.site("alpha").text

    set_paused(stack, True)
    v2 = stack.deploy(site_repo(tmp_path / "v2", "v2"), service="alpha")
    beta = stack.deploy(site_repo(tmp_path / "beta", "beta"), service="beta")
    secret = stack.deploy(
        site_repo(tmp_path / "secret", "secret"),
        service="gamma",
        build={"command": "true", "output": "."},
    )
    accepted = [v2, beta, secret]
    for job_id in accepted:
        wait_status(stack, job_id, {"queued"})
    old_seq = max(int(client.hget(keys.job(j), "seq")) for j in (v1, v2))
    old_fence = int(client.get(keys.fence("alpha")))

    client.flushall()
    assert stack.site("alpha").status_code == 404  # Redis really lost the alias
    set_paused(stack, True)  # the operator's first step: nothing runs until recovered
    deployers_beat_twice(stack, keys)

    done = recover(stack)

    assert done["aliases_restored"] == ["alpha"]
    assert sorted(done["jobs_requeued"]) == sorted([v2, beta])
    assert done["jobs_failed"] == [secret]
    assert "v1" in stack.site("alpha").text  # served again before anything else ran
    assert int(client.get(keys.seq("alpha"))) >= old_seq
    assert int(client.get(keys.fence("alpha"))) > old_fence
    # A second run finds nothing left to do.
    again = recover(stack)
    assert not again["aliases_restored"]
    assert not again["jobs_requeued"]
    assert not again["jobs_failed"]
    assert not again["seq_raised"]
    assert not again["fence_raised"]

    set_paused(stack, False)
    ended = {job_id: stack.wait(job_id, 90) for job_id in accepted}
    assert ended[v2]["status"] == "live"
    assert ended[beta]["status"] == "live"
    assert ended[secret]["status"] == "failed"
    assert "build override" in ended[secret]["error"]
    assert "v2" in stack.site("alpha").text
    assert "beta" in stack.site("beta").text

    v3 = stack.deploy(site_repo(tmp_path / "v3", "v3"), service="alpha")
    record = stack.wait(v3, 90)
    assert record["status"] == "live", record
    assert record["seq"] > old_seq
    assert "v3" in stack.site("alpha").text
    assert int(client.hget(keys.site("alpha"), "seq")) == record["seq"]
