"""Push to deploy on the real stack: a registered service, a signed GitHub push, the
pinned commit live; replays and forgeries change nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from shared.cli.demo_repo import GIT_IDENTITY
from tests.integration.helpers import Stack, make_env, make_repo

pytestmark = pytest.mark.integration

SECRET = "integration-hook-secret"


@pytest.fixture
def bq_env(valkey_url: str, s3_url: str, tmp_path: Path) -> dict[str, str]:
    """The stack's environment with a secrets key (webhook secrets are sealed)."""
    return make_env(valkey_url, s3_url, tmp_path, BUILDQ_SECRETS_KEY=Fernet.generate_key().decode())


def commit(repo: Path, files: dict[str, str]) -> str:
    """Commit ``files`` on the current branch; the new commit id."""
    env = {**os.environ, **GIT_IDENTITY}
    for rel, text in files.items():
        (repo / rel).write_text(text)
    for argv in (["git", "add", "--all"], ["git", "commit", "--quiet", "-m", "next"]):
        subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True)
    return head(repo)


def head(repo: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True)
    return out.stdout.decode().strip()


def send(
    stack: Stack, payload: dict[str, Any], delivery: str, signature: str | None
) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    headers["X-GitHub-Delivery"] = delivery
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return httpx.post(f"{stack.url}/hooks/github", content=body, headers=headers)


def sign(payload: dict[str, Any], secret: str = SECRET) -> str:
    body = json.dumps(payload).encode()
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deployments(stack: Stack, service: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.url}/deployments", params={"service": service})
    result: list[dict[str, Any]] = answer.json()
    return result


def test_a_signed_push_deploys_the_pushed_commit_once(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "site", {"index.html": "<h1>first</h1>"})
    pushed = head(repo)
    moved = commit(repo, {"index.html": "<h1>second</h1>"})  # the branch moves on
    registered = httpx.put(
        f"{stack.url}/services/web",
        json={"repo_url": f"file://{repo}", "webhook_secret": SECRET},
    )
    assert registered.status_code == 201, registered.text
    payload = {
        "ref": "refs/heads/main",
        "after": pushed,
        "repository": {"clone_url": f"file://{repo}.git", "html_url": "https://example.invalid/x"},
    }

    forged = send(stack, payload, "d-0", sign(payload, "not-the-secret-at-all"))
    missing = send(stack, payload, "d-0", None)
    assert (forged.status_code, missing.status_code) == (401, 401)
    assert deployments(stack, "web") == []

    accepted = send(stack, payload, "d-1", sign(payload))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["deployments"][0]["id"]
    record = stack.wait(job_id)
    assert record["status"] == "live", record
    assert (record["ref"], record["commit"]) == (pushed, pushed)
    assert stack.site("web").text == "<h1>first</h1>"

    replayed = send(stack, payload, "d-1", sign(payload))
    assert replayed.json()["status"] == "duplicate"
    assert [d["id"] for d in deployments(stack, "web")] == [job_id]

    by_name = httpx.post(f"{stack.url}/deployments", json={"service": "web"})
    assert by_name.status_code == 202, by_name.text
    latest = stack.wait(by_name.json()["id"])
    assert (latest["status"], latest["commit"]) == ("live", moved)
    assert stack.site("web").text == "<h1>second</h1>"
    detail = httpx.get(f"{stack.url}/services/web").json()
    assert detail["live"]["id"] == latest["id"]
    assert SECRET not in json.dumps(detail)
