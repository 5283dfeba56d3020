"""Ten quick pushes, each followed at once by its signed GitHub ``push`` delivery, on
the real stack: at most two commits are built, every other job ends superseded
without building, and the site serves the tenth commit.

The first build is held (it waits for a ``go`` file in its job directory) until all
ten deliveries have been accepted, so "quick" holds on a slow machine too: the
deployer may take the first push, or the first two, before the others arrive, and
those may build; no later one but the newest may.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from shared.cli.demo_repo import GIT_IDENTITY
from tests.integration.helpers import TERMINAL, Stack, github_delivery, make_env, make_repo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SERVICE = "burst"
SECRET = "burst-hook-secret"
PUSHES = 10
# Each build waits (at most 60 s) for the test's go-ahead in its job directory.
BUILD_SH = """\
set -e
i=0
while [ ! -e "$HOME/../go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
mkdir -p out
cp index.html out/
"""
BUILDQ_TOML = '[build]\ncommand = "sh build.sh"\noutput = "out"\n'


@pytest.fixture
def bq_env(valkey_url: str, s3_url: str, tmp_path: Path) -> dict[str, str]:
    """The stack's environment with a secrets key (webhook secrets are sealed)."""
    return make_env(valkey_url, s3_url, tmp_path, BUILDQ_SECRETS_KEY=Fernet.generate_key().decode())


def git(repo: Path, *argv: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    done = subprocess.run(["git", *argv], cwd=repo, env=env, check=True, capture_output=True)
    return done.stdout.decode().strip()


def push_commit(work: Path, number: int) -> str:
    """Commit a page naming ``number`` and push it to the origin; the commit id."""
    (work / "index.html").write_text(f"<h1>push {number}</h1>")
    git(work, "commit", "--quiet", "--all", "-m", f"push {number}")
    git(work, "push", "--quiet", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def deliver(stack: Stack, origin: Path, sha: str, delivery: str) -> httpx.Response:
    """A correctly signed GitHub ``push`` delivery of ``sha`` to main."""
    payload = {
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"clone_url": f"file://{origin}", "html_url": "https://example.invalid/b"},
    }
    return github_delivery(stack.url, payload, secret=SECRET, delivery=delivery)


def release_builds(work_dir: Path) -> None:
    """The go-ahead in every job directory there is now (one may be being replaced)."""
    for job_dir in work_dir.glob("*/*"):
        try:
            (job_dir / "go").touch()
        except (FileNotFoundError, NotADirectoryError):
            continue


def wait_all_ended(stack: Stack, ids: list[str], timeout_s: float = 150) -> list[dict[str, Any]]:
    """Every job's record (as the API shows it) once all have ended, releasing builds
    as their job directories appear."""
    work_dir = Path(stack.env["BUILDQ_WORK_DIR"])
    deadline = time.monotonic() + timeout_s
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        release_builds(work_dir)
        records = [httpx.get(f"{stack.url}/deployments/{i}").json() for i in ids]
        if all(r.get("status") in TERMINAL for r in records):
            return records
        for proc in stack.procs:
            assert proc.poll() is None, f"a daemon exited: {proc.args} -> {proc.returncode}"
        time.sleep(0.1)
    pending = {r.get("id"): r.get("status") for r in records if r.get("status") not in TERMINAL}
    raise AssertionError(f"jobs did not end within {timeout_s}s: {pending}")


def test_ten_quick_pushes_build_at_most_two_commits_and_the_newest_is_live(
    stack: Stack, tmp_path: Path
) -> None:
    work = make_repo(tmp_path / "work", {"buildq.toml": BUILDQ_TOML, "build.sh": BUILD_SH})
    (work / "index.html").write_text("<h1>push 0</h1>")
    git(work, "add", "index.html")
    git(work, "commit", "--quiet", "-m", "page")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(work), str(origin))
    git(work, "remote", "add", "origin", str(origin))
    registered = httpx.put(
        f"{stack.url}/services/{SERVICE}",
        json={"repo_url": f"file://{origin}", "webhook_secret": SECRET},
    )
    assert registered.status_code == 201, registered.text

    shas: list[str] = []
    ids: list[str] = []
    for number in range(1, PUSHES + 1):
        shas.append(push_commit(work, number))
        answer = deliver(stack, origin, shas[-1], f"burst-delivery-{number}")
        assert answer.status_code == 202, answer.text
        [deployment] = answer.json()["deployments"]
        assert (deployment["created"], deployment["commit"]) == (True, shas[-1]), deployment
        ids.append(deployment["id"])
    assert len(set(shas)) == len(set(ids)) == PUSHES

    records = wait_all_ended(stack, ids)

    by_id = {r["id"]: r for r in records}
    assert [r["commit"] for r in records] == shas  # each job pinned to its own push
    logs = {job_id: stack.logs_text(job_id) for job_id in ids}
    built = [job_id for job_id in ids if "buildq: fetched source" in logs[job_id]]
    assert 1 <= len(built) <= 2, {i: by_id[i]["status"] for i in ids}
    assert built[-1] == ids[-1]  # the newest is always built
    for job_id in built:
        assert by_id[job_id]["status"] == "live", by_id[job_id]
        assert "publishing" in by_id[job_id]["phases"]
    for job_id in set(ids) - set(built):
        record = by_id[job_id]
        assert record["status"] == "superseded", record  # none failed, none lost
        assert record["superseded_by"] in ids[ids.index(job_id) + 1 :], record
        assert "publishing" not in record["phases"], record["phases"]
        assert "buildq: superseded by " in logs[job_id]
        assert "build from" not in logs[job_id]
    # Superseded the moment they were taken, most never had a building phase at all
    # (one taken before the newer pushes arrived may have waited for the lock there).
    waited = [i for i in set(ids) - set(built) if "building" in by_id[i]["phases"]]
    assert len(waited) <= 1, waited  # the deployer's second slot holds one job at a time

    assert stack.site(SERVICE).text == f"<h1>push {PUSHES}</h1>"
    detail = httpx.get(f"{stack.url}/services/{SERVICE}").json()
    assert detail["live"]["id"] == ids[-1]
