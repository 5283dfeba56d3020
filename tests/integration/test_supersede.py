"""Never build what is already stale, on real processes (deployer/staleness.py): a
burst of deploys of one service builds only the newest, and a pinned commit that is
already live ends live at once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.redis.keys import Keys
from tests.integration.faults import FAST, redis_client, wait_all_ended
from tests.integration.helpers import Stack, make_repo

pytestmark = pytest.mark.integration

BUILD_TOML = '[build]\ncommand = "mkdir -p out && cp index.html out/"\noutput = "out"\n'


@pytest.fixture
def one_slot(bq_env: dict[str, str], tmp_path: Path, s3_client: object) -> Iterator[Stack]:
    """An uploader and one deployer with one slot: jobs are taken one at a time."""
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack({**bq_env, **FAST}, logs).start(deployers=1, slots=1)
    try:
        yield running
    finally:
        running.stop()


def _wait_all_queued(client: Any, keys: Keys, ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while any(client.hget(keys.job(i), "status") != "queued" for i in ids):
        assert time.monotonic() < deadline, "the jobs never all reached the build queue"
        time.sleep(0.05)


def _site_objects(s3: Any, bucket: str) -> set[str]:
    """Every published object: blobs, packs and manifests (not records, logs, sources)."""
    found: set[str] = set()
    for prefix in ("blobs/", "packs/", "manifests/", "sites/"):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        found |= {o["Key"] for page in pages for o in page.get("Contents", [])}
    return found


def test_five_queued_deploys_of_one_service_build_only_the_newest(
    one_slot: Stack, tmp_path: Path
) -> None:
    keys = Keys(one_slot.env["BUILDQ_NAMESPACE"])
    client = redis_client(one_slot.env)
    repo = make_repo(tmp_path / "burst", {"buildq.toml": BUILD_TOML, "index.html": "burst"})
    assert httpx.put(f"{one_slot.url}/fleet", json={"paused": True}).json()["paused"] is True
    ids = [one_slot.deploy(repo, service="burst") for _ in range(5)]
    _wait_all_queued(client, keys, ids)

    assert httpx.put(f"{one_slot.url}/fleet", json={"paused": False}).status_code == 200
    records = wait_all_ended(client, keys, ids, 60, one_slot)

    newest = max(ids, key=lambda i: int(records[i]["seq"]))
    assert records[newest]["status"] == "live"
    assert "p:publishing:end" in records[newest]
    assert "buildq: build from buildq.toml" in one_slot.logs_text(newest)
    for job_id in set(ids) - {newest}:
        record = one_slot.wait(job_id)  # the API's view of the record
        assert record["status"] == "superseded", record
        assert record["superseded_by"] == newest
        assert "building" not in record["phases"], record["phases"]
        assert "publishing" not in record["phases"]
        log = one_slot.logs_text(job_id)
        assert f"buildq: superseded by {newest}: submission " in log
        assert "fetched source" not in log
        assert "build from" not in log
    built = [i for i in ids if "p:publishing:start" in records[i]]
    assert built == [newest]
    assert one_slot.site("burst").text.strip() == "burst"


def test_a_pinned_commit_already_live_ends_live_at_once_served_by_the_first(
    stack: Stack, tmp_path: Path, s3_client: Any, bq_env: dict[str, str]
) -> None:
    repo = make_repo(tmp_path / "pinned", {"buildq.toml": BUILD_TOML, "index.html": "pinned"})
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    first = stack.wait(stack.deploy(repo, service="pinned", ref=sha))
    assert first["status"] == "live", first
    bucket = bq_env["BUILDQ_S3_BUCKET"]
    published = _site_objects(s3_client, bucket)
    assert published  # the first deploy did publish

    again = stack.wait(stack.deploy(repo, service="pinned", ref=sha))
    branch = stack.wait(stack.deploy(repo, service="pinned", ref="main"))

    assert again["status"] == "live", again
    assert again["served_by"] == first["id"]
    assert again["commit"] == sha
    assert again["url"] == first["url"]
    assert "publishing" not in again["phases"]
    assert "settings_digest" not in again  # kept in Redis only, never in an answer
    log = stack.logs_text(again["id"])
    assert f"not built, served by {first['id']}" in log
    assert "fetched source" not in log
    assert "build from" not in log
    # A branch ref builds even at the same commit (a build hook may want new content).
    assert branch["status"] == "live", branch
    assert branch.get("served_by") is None
    assert "buildq: build from buildq.toml" in stack.logs_text(branch["id"])
    new_objects = _site_objects(s3_client, bucket) - published
    assert new_objects == {f"manifests/{branch['id']}.json"}  # the served one added none
