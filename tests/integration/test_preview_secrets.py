"""Secrets for previews on the real stack: a preview made by a verified webhook from a
branch of the service's own repository (a push to a preview branch, a pull request
from the same repository) builds with the service's secrets; a pull request from a
fork is not built at all; a manual deploy of a preview's name gets none, by the same
commit neither. Builds publish only the secret's SHA-256."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.cli.demo_repo import GIT_IDENTITY
from tests.integration.helpers import Stack, github_delivery, make_repo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HOOK_SECRET = "preview-hook-secret"
API_KEY = "sk_test_" + "Vb4" * 10  # shell-safe inside double quotes
NOT_DELIVERED = "no-secret"
BUILD_SH = f"""\
set -e
mkdir -p out
cp page.html out/index.html
if [ -n "${{API_KEY:-}}" ]; then
  printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1 > out/digest.txt
else
  echo {NOT_DELIVERED} > out/digest.txt
fi
echo "plain: ${{API_KEY:-}}"
"""
BUILDQ_TOML = '[build]\ncommand = "sh build.sh"\noutput = "out"\n'
DELIVERED = hashlib.sha256(API_KEY.encode()).hexdigest()


def git(repo: Path, *argv: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    done = subprocess.run(["git", *argv], cwd=repo, env=env, check=True, capture_output=True)
    return done.stdout.decode().strip()


def commit_on(repo: Path, branch: str, page: str) -> str:
    """A commit on a new ``branch`` off main changing the page; its id (main stays checked out)."""
    git(repo, "checkout", "--quiet", "-b", branch, "main")
    (repo / "page.html").write_text(page)
    git(repo, "commit", "--quiet", "--all", "-m", page)
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "--quiet", "main")
    return sha


def deliver_raw(stack: Stack, event: str, payload: dict[str, Any], delivery: str) -> httpx.Response:
    """A signed GitHub delivery; the answer."""
    return github_delivery(stack.url, payload, secret=HOOK_SECRET, delivery=delivery, event=event)


def deliver(stack: Stack, event: str, payload: dict[str, Any], delivery: str) -> dict[str, Any]:
    """A signed GitHub delivery; the one deployment it made."""
    answer = deliver_raw(stack, event, payload, delivery)
    assert answer.status_code == 202, answer.text
    [deployment] = answer.json()["deployments"]
    assert deployment["created"] is True, deployment
    return dict(deployment)


def pull_request(repo: Path, number: int, sha: str, head_repo: str) -> dict[str, Any]:
    return {
        "action": "opened",
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": sha, "ref": f"topic-{number}", "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "repo": {"full_name": "acme/web"}},
        },
        "repository": {"clone_url": f"file://{repo}", "full_name": "acme/web"},
    }


def built_with(stack: Stack, job_id: str) -> tuple[str, str]:
    """The job's record once live, and what its build published about the secret."""
    record = stack.wait(job_id, timeout_s=120)
    assert record["status"] == "live", record
    assert "publishing" in record["phases"], record  # built, not served from another
    digest = stack.site(record["service"], "digest.txt")
    assert digest.status_code == 200, digest.text
    return stack.logs_text(job_id), digest.text.strip()


def test_previews_of_the_same_repository_get_the_secrets_forks_and_manual_deploys_do_not(
    secret_stack: Stack, tmp_path: Path
) -> None:
    stack = secret_stack
    repo = make_repo(
        tmp_path / "web",
        {"buildq.toml": BUILDQ_TOML, "build.sh": BUILD_SH, "page.html": "<h1>main</h1>"},
    )
    registered = httpx.put(
        f"{stack.url}/services/web",
        json={
            "repo_url": f"file://{repo}",
            "webhook_secret": HOOK_SECRET,
            "preview_branches": ["feature/*"],
        },
    )
    assert registered.status_code == 201, registered.text
    put = httpx.put(f"{stack.url}/services/web/secrets/API_KEY", json={"value": API_KEY})
    assert put.status_code == 200, put.text

    branch_sha = commit_on(repo, "feature/login", "<h1>login</h1>")
    same_sha = commit_on(repo, "topic-8", "<h1>pr 8</h1>")
    # A fork's head is no branch of the base repository: like GitHub's refs/pull/<n>/head.
    fork_sha = commit_on(repo, "fork-work", "<h1>pr 9</h1>")
    git(repo, "update-ref", "refs/pull/9/head", fork_sha)
    git(repo, "branch", "--quiet", "-D", "fork-work")
    git(repo, "config", "uploadpack.allowReachableSHA1InWant", "true")

    branch = deliver(
        stack,
        "push",
        {
            "ref": "refs/heads/feature/login",
            "after": branch_sha,
            "repository": {"clone_url": f"file://{repo}"},
        },
        "preview-push",
    )
    same = deliver(stack, "pull_request", pull_request(repo, 8, same_sha, "acme/web"), "pr-8")
    fork = deliver_raw(stack, "pull_request", pull_request(repo, 9, fork_sha, "evil/web"), "pr-9")
    assert fork.status_code == 202, fork.text
    assert fork.json()["status"] == "ignored"
    assert "forks are not built" in fork.json()["reason"]
    assert [d["service"] for d in (branch, same)] == ["web--feature-login", "web--pr-8"]

    for deployment in (branch, same):
        log, digest = built_with(stack, deployment["id"])
        assert digest == DELIVERED, deployment
        assert "buildq: with the secrets of web: API_KEY" in log
        assert "plain: ***" in log  # redacted with the secrets it was given
        assert API_KEY not in log
    services = [job["service"] for job in httpx.get(f"{stack.url}/deployments").json()]
    assert "web--pr-9" not in services  # the fork's code never ran

    # A manual deploy of the preview's name gets neither the secrets nor, at the same
    # commit, the deployment that was built with them; nor may a body ask for them.
    sneaked = httpx.post(
        f"{stack.url}/deployments",
        json={"repo_url": f"file://{repo}", "service": "web--feature-login", "secrets_of": "web"},
    )
    assert sneaked.status_code == 422, sneaked.text
    manual = stack.deploy(repo, service="web--feature-login", ref=branch_sha)
    log, digest = built_with(stack, manual)
    assert digest == NOT_DELIVERED
    assert "secrets" not in log
    record = httpx.get(f"{stack.url}/deployments/{manual}").json()
    assert record.get("secrets_of") is None
    assert record.get("served_by") is None
