"""ChatOps, the lock/claim API and the CLI against a real uploader process and valkey."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import redis as redis_sync

from shared.redis.keys import Keys
from tests.integration.helpers import Stack
from uploader.chatops import slack_signature

pytestmark = pytest.mark.integration

SECRET = "integration-signing-secret"
ROLES = {"root": "admin", "alice": "deployer", "bob": "deployer", "carol": "deployer"}
ROLES |= {"dave": "deployer"}


@pytest.fixture
def uploader(bq_env: dict[str, str], tmp_path: Path, s3_client: object) -> Iterator[Stack]:
    """An uploader process (no deployer) with ChatOps configured."""
    bq_env["BUILDQ_SLACK_SIGNING_SECRET"] = SECRET
    bq_env["BUILDQ_API_TOKENS"] = ",".join(f"{n}:{r}=tok-{n}" for n, r in ROLES.items())
    bq_env["BUILDQ_API_TOKEN"] = "tok-root"
    bq_env["BUILDQ_CHAT_USERS"] = "T1:U-alice=alice,T1:U-bob=bob,T1:U-root=root"
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(bq_env, logs).start(deployers=0)
    try:
        yield running
    finally:
        running.stop()


def read_events(env: dict[str, str]) -> list[dict[str, str]]:
    client = redis_sync.Redis.from_url(env["BUILDQ_REDIS_URL"], decode_responses=True)
    try:
        return [e for _, e in client.xrange(Keys(env["BUILDQ_NAMESPACE"]).events)]
    finally:
        client.close()


def body(text: str, user: str = "alice", trigger: str = "trigger-1") -> bytes:
    fields = {
        "team_id": "T1",
        "channel_id": "C1",
        "user_id": f"U-{user}",
        "user_name": user,
        "command": "/buildq",
        "text": text,
        "trigger_id": trigger,
    }
    return urlencode(fields).encode()


def headers(content: bytes, at_s: float, secret: str = SECRET) -> dict[str, str]:
    timestamp = str(int(at_s))
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": slack_signature(secret.encode(), timestamp, content),
    }


def test_forged_stale_and_unsigned_chat_requests_get_401_and_change_nothing(
    uploader: Stack, bq_env: dict[str, str]
) -> None:
    url = f"{uploader.url}/chatops"
    content = body("lock web")
    now = time.time()
    attempts = {
        "forged": headers(content, now, secret="guessed"),
        "stale": headers(content, now - 301),
        "unsigned": {"content-type": "application/x-www-form-urlencoded"},
        "malformed": {**headers(content, now), "x-slack-signature": "v0=" + "f" * 5000},
    }
    for name, sent in attempts.items():
        response = httpx.post(url, content=content, headers=sent)
        assert response.status_code == 401, (name, response.text)

    assert httpx.get(f"{uploader.url}/locks", headers=uploader.auth).json() == []
    assert read_events(bq_env) == []


def test_signed_lock_is_visible_to_the_api_and_a_duplicate_delivery_runs_once(
    uploader: Stack, bq_env: dict[str, str]
) -> None:
    content = body("lock web deploying the hotfix", trigger="trigger-dup")
    sent = headers(content, time.time())

    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(f"{uploader.url}/chatops", content=content, headers=sent),
                range(4),
            )
        )

    assert all(a.status_code == 200 for a in answers)
    texts = [a.json()["text"] for a in answers]
    assert any(t.startswith("alice locked web until ") for t in texts)
    locks = httpx.get(f"{uploader.url}/locks", headers=uploader.auth).json()
    assert [(x["service"], x["owner"], x["user_id"]) for x in locks] == [
        ("web", "alice", "U-alice")
    ]
    locked = [e for e in read_events(bq_env) if e["kind"] == "lock"]
    assert [(e["action"], e["owner"]) for e in locked] == [("locked", "alice")]

    # Bob cannot release it; the admin can.
    bob = body("unlock web", user="bob", trigger="trigger-bob")
    refused = httpx.post(f"{uploader.url}/chatops", content=bob, headers=headers(bob, time.time()))
    root = body("unlock web force", user="root", trigger="trigger-root")
    forced = httpx.post(f"{uploader.url}/chatops", content=root, headers=headers(root, time.time()))
    assert refused.json()["response_type"] == "ephemeral"
    assert forced.json()["text"] == "root unlocked web (forced; it was alice's)"
    assert httpx.get(f"{uploader.url}/locks", headers=uploader.auth).json() == []


def buildq(stack: Stack, *args: str, as_: str = "root") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in stack.env.items() if k != "BUILDQ_API_URL"}
    env["BUILDQ_API_TOKEN"] = f"tok-{as_}"  # the CLI's identity: its token
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", *args, "--api", stack.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_lock_unlock_claim_release_against_the_api(uploader: Stack) -> None:
    took = buildq(uploader, "lock", "web", "--ttl", "2h", "--reason", "qa", as_="carol")
    listed = buildq(uploader, "locks", as_="dave")
    refused = buildq(uploader, "unlock", "web", as_="dave")
    spoofed = buildq(uploader, "unlock", "web", "--owner", "carol", as_="dave")
    released = buildq(uploader, "unlock", "web", "--owner", "carol", as_="carol")
    claimed = buildq(uploader, "claim", "staging", "--branch", "main", as_="carol")
    claims = buildq(uploader, "claims")
    dropped = buildq(uploader, "release", "staging", as_="carol")

    assert took.returncode == 0, took.stderr
    assert took.stdout.startswith("locked web as carol until ")
    assert "web" in listed.stdout
    assert "carol" in listed.stdout
    assert "qa" in listed.stdout
    assert refused.returncode == 1
    assert "403" in refused.stderr
    assert spoofed.returncode == 1
    assert "names someone else" in spoofed.stderr
    assert released.stdout.strip() == "unlocked web (was carol's)"
    assert claimed.returncode == 0, claimed.stderr
    assert claims.stdout.startswith("staging")
    assert "main" in claims.stdout
    assert dropped.stdout.strip() == "released staging (was carol's)"
    assert httpx.get(f"{uploader.url}/staging", headers=uploader.auth).json() == []
