"""Commit statuses back to the forge on the real stack, against a local receiver that
plays the forge's API: pending when a signed push is accepted, success with the
site's URL when live, failure when the build fails; the token goes only there and
never into a log."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from shared.cli.embedded import wait_for_port
from shared.redis.keys import Keys
from tests.integration.faults import redis_client
from tests.integration.helpers import Stack, github_delivery, make_env, make_repo, spawn, stop

pytestmark = pytest.mark.integration

SECRET = "statuses-hook-secret"
TOKEN = "ghp_status_token_never_logged_0123456789"


class Forge:
    """A forge's status API on loopback: records every request it is sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                forge.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(body),
                    }
                )
                self.send_response(201)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def states(self, sha: str) -> list[str]:
        return [r["body"]["state"] for r in self.requests if r["path"].endswith(sha)]

    def wait_for(self, sha: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in self.requests:
                if r["path"].endswith(sha) and r["body"]["state"] == state:
                    return r
            time.sleep(0.05)
        raise AssertionError(f"no {state} status for {sha}: {self.requests}")


@pytest.fixture
def forge() -> Iterator[Forge]:
    running = Forge()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def bq_env(valkey_url: str, s3_url: str, tmp_path: Path, forge: Forge) -> dict[str, str]:
    return make_env(
        valkey_url,
        s3_url,
        tmp_path,
        BUILDQ_SECRETS_KEY=Fernet.generate_key().decode(),
        BUILDQ_STATUS_TOKENS=f"github={TOKEN}",
        BUILDQ_STATUS_API_URLS=f"github={forge.url}",
    )


def push(stack: Stack, repo: Path, sha: str, delivery: str) -> httpx.Response:
    payload = {
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"clone_url": f"file://{repo}", "full_name": "acme/web"},
    }
    return github_delivery(stack.url, payload, secret=SECRET, delivery=delivery)


def head(repo: Path) -> str:
    return (repo / ".git" / "refs" / "heads" / "main").read_text().strip()


def register(stack: Stack, name: str, repo: Path) -> None:
    answer = httpx.put(
        f"{stack.url}/services/{name}",
        json={"repo_url": f"file://{repo}", "webhook_secret": SECRET},
    )
    assert answer.status_code == 201, answer.text


def test_a_push_gets_pending_then_success_with_the_site_url(
    stack: Stack, forge: Forge, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "web", {"index.html": "<h1>statuses</h1>"})
    register(stack, "web", repo)
    sha = head(repo)

    answer = push(stack, repo, sha, "delivery-1")
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["deployments"][0]["id"]
    assert stack.wait(job_id)["status"] == "live"
    success = forge.wait_for(sha, "success")

    assert forge.states(sha) == ["pending", "success"]
    assert success["path"] == f"/repos/acme/web/statuses/{sha}"
    assert success["auth"] == f"Bearer {TOKEN}"
    assert success["body"]["context"] == "buildq/web"
    assert success["body"]["target_url"] == f"http://web.localhost:{stack.sites_port}/"
    assert stack.site("web").text == "<h1>statuses</h1>"
    # A replayed delivery deploys nothing and posts nothing more.
    assert push(stack, repo, sha, "delivery-1").json()["status"] == "duplicate"
    time.sleep(0.5)
    assert forge.states(sha) == ["pending", "success"]
    for log in stack.logs.iterdir():
        assert TOKEN not in log.read_text(errors="replace"), log


def test_a_failed_build_gets_failure(stack: Stack, forge: Forge, tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "broken",
        {"buildq.toml": '[build]\ncommand = "echo broken; exit 3"\noutput = "."\n'},
    )
    register(stack, "broken", repo)
    sha = head(repo)

    job_id = push(stack, repo, sha, "delivery-2").json()["deployments"][0]["id"]
    assert stack.wait(job_id)["status"] == "failed"
    failure = forge.wait_for(sha, "failure")

    assert forge.states(sha) == ["pending", "failure"]
    assert failure["body"]["context"] == "buildq/broken"
    assert failure["body"]["description"] == "failed"


# The build waits (at most 60 s) for the test's go-ahead in its job directory.
HELD_BUILD = """\
i=0
while [ ! -e "$HOME/../go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
mkdir -p out
cp index.html out/
"""


def test_a_deploy_that_ends_while_no_uploader_runs_gets_its_status_when_one_starts(
    stack: Stack, forge: Forge, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "held",
        {
            "index.html": "<h1>held</h1>",
            "build.sh": HELD_BUILD,
            "buildq.toml": '[build]\ncommand = "sh build.sh"\noutput = "out"\n',
        },
    )
    register(stack, "held", repo)
    sha = head(repo)
    job_id = push(stack, repo, sha, "delivery-3").json()["deployments"][0]["id"]
    forge.wait_for(sha, "pending")
    work = Path(stack.env["BUILDQ_WORK_DIR"])
    deadline = time.monotonic() + 30
    while not list(work.glob(f"*/{job_id}")) and time.monotonic() < deadline:
        time.sleep(0.05)
    uploader = stack.procs[0]
    stop(uploader)  # SIGTERM: the only uploader is gone

    for job_dir in work.glob(f"*/{job_id}"):
        (job_dir / "go").touch()  # the build finishes and the job goes live meanwhile
    client = redis_client(stack.env)
    job_key = Keys(stack.env["BUILDQ_NAMESPACE"]).job(job_id)
    deadline = time.monotonic() + 60
    while client.hget(job_key, "status") != "live":
        assert time.monotonic() < deadline, "the held deploy did not go live"
        time.sleep(0.1)
    time.sleep(0.5)
    assert forge.states(sha) == ["pending"]

    stack.procs[0] = spawn("uploader", stack.env, stack.logs / "uploader-2.log")
    wait_for_port(stack.port, 30, stack.procs[0])
    success = forge.wait_for(sha, "success")

    assert success["body"]["target_url"] == f"http://held.localhost:{stack.sites_port}/"
    assert forge.states(sha) == ["pending", "success"]
