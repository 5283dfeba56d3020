"""Deployers serialise deploys per service with the deploy lock, and wait for people."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.redis.keys import Keys
from tests.integration.faults import redis_client, summary, wait_all_ended
from tests.integration.helpers import Stack, make_repo, running_stack

pytestmark = pytest.mark.integration


def test_deploy_waits_for_a_person_holding_the_lock_and_goes_live_after_unlock(
    stack: Stack, tmp_path: Path
) -> None:
    taken = httpx.put(f"{stack.url}/locks/held-site", json={"reason": "db migration"})
    assert taken.status_code == 200, taken.text
    me = taken.json()["owner"]  # the caller's identity (local mode: the OS user)
    repo = make_repo(tmp_path / "held", {"index.html": "after the migration"})
    job_id = stack.deploy(repo, service="held-site")
    deadline = time.monotonic() + 30
    record = {}
    while (record := httpx.get(f"{stack.url}/deployments/{job_id}").json())["status"] != "waiting":
        assert record["status"] not in ("live", "failed"), record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    assert record["holder"] == f"{me} (db migration)"
    time.sleep(2.5)  # several re-checks while the lock stays held
    record = httpx.get(f"{stack.url}/deployments/{job_id}").json()
    assert record["status"] in ("waiting", "queued", "building"), record
    assert stack.site("held-site").status_code == 404
    assert f"held-site is locked by {me} (db migration); waiting" in stack.logs_text(job_id)

    released = httpx.request("DELETE", f"{stack.url}/locks/held-site", json={})
    assert released.status_code == 200, released.text
    unlocked = time.monotonic()
    record = stack.wait(job_id, timeout_s=30)
    live_after_s = time.monotonic() - unlocked
    assert record["status"] == "live", record
    assert record["attempts"] == 1, "waiting must not use up attempts"
    assert record.get("holder") is None
    assert stack.site("held-site").text == "after the migration"
    summary("deploy while locked", live_after_unlock_s=round(live_after_s, 2))
    assert live_after_s < 5, live_after_s


def test_different_services_build_in_parallel_and_one_service_serialises(
    stack: Stack, tmp_path: Path
) -> None:
    keys = Keys(stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(stack.env)
    command = "sleep 1; mkdir -p out; echo $BUILDQ_JOB_ID > out/index.html"
    repo = make_repo(
        tmp_path / "slow", {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'}
    )
    parallel = [stack.deploy(repo, service=name) for name in ("par-a", "par-b")]
    spans = {
        i: (int(r["p:building:start"]), int(r["p:publishing:end"]))
        for i, r in wait_all_ended(client, keys, parallel, 60, stack).items()
    }
    a, b = spans.values()
    assert a[0] < b[1], f"different services did not overlap: {spans}"
    assert b[0] < a[1], f"different services did not overlap: {spans}"

    # The second deploy is submitted while the first builds (holding the lock), so
    # neither is stale when taken and both build: the second waits for the lock.
    first = stack.deploy(repo, service="serial")
    deadline = time.monotonic() + 30
    while client.hget(keys.job(first), "status") != "building":
        assert time.monotonic() < deadline, "the first deploy never started building"
        time.sleep(0.02)
    second = stack.deploy(repo, service="serial")
    records = wait_all_ended(client, keys, [first, second], 90, stack)
    assert [records[i]["status"] for i in (first, second)] == ["live", "live"], records
    assert int(records[first]["p:publishing:end"]) <= int(records[second]["p:publishing:start"])
    # The lock's own events are the record of who held it when: for one service
    # they must alternate strictly between taking it and giving it up.
    actions = [
        e["action"]
        for _, e in client.xrange(keys.events, "-", "+")
        if e.get("kind") == "lock"
        and e.get("service") == "serial"
        and e["action"] in ("locked", "released", "forced", "expired")
    ]
    assert actions[0::2] == ["locked"] * len(actions[0::2]), actions
    assert all(a != "locked" for a in actions[1::2]), actions
    assert len(actions) >= 4, actions  # two deploys, each locked and released
    fences = client.hget(keys.site("serial"), "fence")
    assert fences is not None
    assert int(fences) >= 2


@pytest.fixture
def sleepy_stack(bq_env: dict[str, str], tmp_path: Path, s3_client: object) -> Iterator[Stack]:
    """A stack whose waiting jobs would look at the lock again only every 30 s."""
    bq_env["BUILDQ_LOCK_RECHECK_S"] = "30"
    with running_stack(bq_env, tmp_path) as running:
        yield running


def test_the_unlock_wakes_a_waiting_deploy_before_its_next_look(
    sleepy_stack: Stack, tmp_path: Path
) -> None:
    stack = sleepy_stack
    taken = httpx.put(f"{stack.url}/locks/woken", json={"reason": "freeze"})
    assert taken.status_code == 200, taken.text
    repo = make_repo(tmp_path / "woken", {"index.html": "woken"})
    job_id = stack.deploy(repo, service="woken")
    deadline = time.monotonic() + 30
    while httpx.get(f"{stack.url}/deployments/{job_id}").json()["status"] != "waiting":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # deferred for 30 s now

    released = httpx.request("DELETE", f"{stack.url}/locks/woken", json={})
    assert released.status_code == 200, released.text
    unlocked = time.monotonic()
    record = stack.wait(job_id, timeout_s=25)  # well before the 30 s look
    live_after_s = time.monotonic() - unlocked
    assert record["status"] == "live", record
    assert stack.site("woken").text == "woken"
    summary("unlock wakes a waiting deploy", live_after_unlock_s=round(live_after_s, 2))
