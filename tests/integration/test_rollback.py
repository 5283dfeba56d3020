"""Instant rollback on a real stack: ``POST /services/{name}/rollback`` serves an
earlier deployment again with no build and no upload, shows in the service's
history and the events stream, cannot be undone by an older deploy that was in
flight, and is itself replaced by the next deploy; ``buildq rollback`` does the same
from the CLI. (Its latency is measured in tests/bench/bench_rollback.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Stack, make_repo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SERVICE = "rb"
BUILDQ = [sys.executable, "-m", "shared.cli.main"]


def site_repo(path: Path, text: str, *, wait: bool = False) -> Path:
    """A repository whose build publishes ``text``; with ``wait`` the build first
    prints a marker and blocks until the file ``$HOME/../go`` exists."""
    gate = (
        'echo build-waiting; i=0; while [ ! -e \\"$HOME/../go\\" ] && [ $i -lt 600 ]; '
        "do sleep 0.05; i=$((i+1)); done; "
        if wait
        else ""
    )
    command = f"{gate}mkdir -p out && echo {text} > out/index.html"
    return make_repo(path, {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'})


def bucket_state(s3_client: Any, bucket: str) -> dict[str, str]:
    """Every object's key and ETag."""
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"]: obj["ETag"] for page in pages for obj in page.get("Contents", [])}


def rollback(stack: Stack, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{stack.url}/services/{SERVICE}/rollback", json=body or {})


def live_text(stack: Stack) -> str:
    return stack.site(SERVICE).text.strip()


def site_events(stack: Stack) -> list[str]:
    """The events stream's ``site`` entries (read until quiet: it follows)."""
    lines: list[str] = []
    try:
        with httpx.stream(
            "GET", f"{stack.url}/events?after=0-0", timeout=httpx.Timeout(2.0)
        ) as response:
            for line in response.iter_lines():
                lines.append(line)
    except httpx.ReadTimeout:
        pass
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "event: site"]


def test_rollback_serves_the_old_deployment_with_no_build_or_upload(
    stack: Stack, tmp_path: Path, s3_client: Any
) -> None:
    v1 = site_repo(tmp_path / "v1", "version-one")
    registered = httpx.put(f"{stack.url}/services/{SERVICE}", json={"repo_url": f"file://{v1}"})
    assert registered.status_code == 201, registered.text
    first = stack.deploy(v1, service=SERVICE)
    assert stack.wait(first)["status"] == "live"
    second = stack.deploy(site_repo(tmp_path / "v2", "version-two"), service=SERVICE)
    assert stack.wait(second)["status"] == "live"
    assert live_text(stack) == "version-two"
    bucket = stack.env["BUILDQ_S3_BUCKET"]
    objects_before = bucket_state(s3_client, bucket)
    jobs_before = httpx.get(f"{stack.url}/deployments").json()

    answer = rollback(stack)

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert (done["id"], done["previous"], done["rollback"]) == (first, second, True)
    assert live_text(stack) == "version-one"
    assert httpx.get(f"{stack.url}/deployments").json() == jobs_before  # no build ran
    objects_after = bucket_state(s3_client, bucket)
    alias = f"aliases/{SERVICE}.json"
    assert set(objects_after) == set(objects_before)  # nothing uploaded...
    changed = {k for k in objects_after if objects_after[k] != objects_before[k]}
    assert changed == {alias}  # ...but the durable copy of the alias

    detail = httpx.get(f"{stack.url}/services/{SERVICE}").json()
    assert detail["live"]["id"] == first
    assert detail["live"]["rollback"] == "1"
    assert [(p["id"], p["rollback"]) for p in detail["promotions"]] == [
        (first, True),
        (second, False),
        (first, False),
    ]
    *_, last = site_events(stack)
    assert f'"id":"{first}"' in last
    assert '"rollback":"1"' in last

    third = stack.deploy(site_repo(tmp_path / "v3", "version-three"), service=SERVICE)
    assert stack.wait(third)["status"] == "live"
    assert live_text(stack) == "version-three"


def test_a_deploy_in_flight_during_a_rollback_cannot_undo_it(stack: Stack, tmp_path: Path) -> None:
    first = stack.deploy(site_repo(tmp_path / "v1", "version-one"), service=SERVICE)
    assert stack.wait(first)["status"] == "live"
    second = stack.deploy(site_repo(tmp_path / "v2", "version-two"), service=SERVICE)
    assert stack.wait(second)["status"] == "live"
    slow = stack.deploy(site_repo(tmp_path / "v3", "version-three", wait=True), service=SERVICE)
    deadline = time.monotonic() + 60
    while "build-waiting" not in stack.logs_text(slow):  # building, holding the lock
        assert time.monotonic() < deadline, stack.logs_text(slow)
        time.sleep(0.05)

    answer = rollback(stack, {"to": first})
    assert answer.status_code == 200, answer.text
    assert live_text(stack) == "version-one"
    (workdir,) = Path(stack.env["BUILDQ_WORK_DIR"]).glob(f"*/{slow}")
    (workdir / "go").touch()

    record = stack.wait(slow)
    assert record["status"] == "superseded", record
    assert record["attempts"] == 1  # refused as superseded, not retried as fenced off
    assert live_text(stack) == "version-one"
    assert f"submission {answer.json()['seq']} ({first}) is newer" in stack.logs_text(slow)


def test_what_cannot_be_rolled_back_to_is_refused_and_nothing_changes(
    stack: Stack, tmp_path: Path
) -> None:
    assert rollback(stack).status_code == 404  # neither registered nor ever live
    other = stack.deploy(site_repo(tmp_path / "other", "other"), service="other")
    failed = stack.deploy(
        make_repo(tmp_path / "bad", {"buildq.toml": '[build]\ncommand = "exit 3"\n'}),
        service=SERVICE,
    )
    assert stack.wait(failed)["status"] == "failed"
    only = stack.deploy(site_repo(tmp_path / "v1", "version-one"), service=SERVICE)
    for job_id in (other, only):
        assert stack.wait(job_id)["status"] == "live"
    live_before = httpx.get(f"{stack.url}/deployments/{only}").json()

    cases = [
        ({}, 409, "no earlier live deployment"),
        ({"to": "f" * 20}, 404, "no deployment"),
        ({"to": other}, 409, "is of service other, not rb"),
        ({"to": failed}, 409, "was never published (it is failed)"),
        ({"to": only}, 409, "is already live"),
        ({"to": "../x"}, 422, "invalid deployment id"),
        ({"to": only, "extra": 1}, 422, ""),
    ]
    for body, status, message in cases:
        answer = rollback(stack, body)
        assert answer.status_code == status, (body, answer.text)
        assert message in answer.text
    assert live_text(stack) == "version-one"
    assert httpx.get(f"{stack.url}/deployments/{only}").json() == live_before


def test_buildq_rollback_from_the_cli(stack: Stack, tmp_path: Path) -> None:
    first = stack.deploy(site_repo(tmp_path / "v1", "version-one"), service=SERVICE)
    assert stack.wait(first)["status"] == "live"
    second = stack.deploy(site_repo(tmp_path / "v2", "version-two"), service=SERVICE)
    assert stack.wait(second)["status"] == "live"

    result = subprocess.run(
        [*BUILDQ, "rollback", SERVICE, first, "--api", stack.url],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert f"{SERVICE} now serves {first}" in result.stdout
    assert f"was {second}" in result.stdout
    assert live_text(stack) == "version-one"
    again = subprocess.run(
        [*BUILDQ, "rollback", SERVICE, first, "--api", stack.url],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode != 0
    assert "already live" in again.stderr
