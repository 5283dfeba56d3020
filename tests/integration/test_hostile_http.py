"""Hostile HTTP against the real uploader process: bodies, tokens, the rate limit
across two uploader replicas, path traversal in serving, and ChatOps signatures."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.cli.embedded import free_ports, wait_for_port
from tests.integration.helpers import Stack, make_env, make_repo, spawn, stop

pytestmark = pytest.mark.integration

TOKEN = "tok-" + uuid.uuid4().hex
SLACK_SECRET = "slack-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RATED = {"Authorization": "Bearer rated-" + TOKEN}  # used only by the rate-limit test
TOKENS = f"other:deployer=other,ops:admin={TOKEN},rated:deployer=rated-{TOKEN}"


def hostile_env(valkey_url: str, s3_url: str, work: Path, extra: dict[str, str]) -> dict[str, str]:
    """Like the ``bq_env`` fixture, for module-scoped stacks."""
    return make_env(valkey_url, s3_url, work, **extra)


def module_stack(
    valkey_url: str, s3_url: str, factory: pytest.TempPathFactory, extra: dict[str, str]
) -> Iterator[Stack]:
    work = factory.mktemp("hostile")
    (work / "logs").mkdir()
    running = Stack(hostile_env(valkey_url, s3_url, work, extra), work / "logs")
    running.start(deployers=1, slots=2)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def guarded(
    valkey_url: str, s3_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {
        "BUILDQ_API_TOKENS": TOKENS,
        "BUILDQ_API_TOKEN": TOKEN,  # what Stack's own calls send
        "BUILDQ_CHAT_USERS": "T1:U-mallory=mallory",
        "BUILDQ_SUBMIT_RATE_PER_MIN": "3",
        "BUILDQ_SLACK_SIGNING_SECRET": SLACK_SECRET,
    }
    yield from module_stack(valkey_url, s3_url, tmp_path_factory, extra)


def raw_request(
    stack: Stack, method: str, path: str, body: bytes = b"", port: int = 0, **headers: str
) -> Any:
    """One request exactly as written: no client-side path normalisation."""
    conn = http.client.HTTPConnection("127.0.0.1", port or stack.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name.replace("_", "-"), value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def jobs(stack: Stack) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = httpx.get(f"{stack.url}/deployments", headers=AUTH).json()
    return result


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"[" * 100_000, 400, "nested too deeply"),
        (b'{"repo_url": NaN}', 400, "NaN"),
        (b'{"repo_url": Infinity}', 400, "Infinity"),
        (b'{"repo_url": "https://a.example/b", "repo_url": "ext::sh"}', 400, "duplicate key"),
        (b'{"repo_url": "https://a.example/\\udc00"}', 400, "lone surrogate"),
        (b'["https://a.example/b"]', 422, "JSON object"),
        (b'{"repo_url": "https://a.example/b", "evil": 1}', 422, "Extra inputs"),
        (b'{"repo_url": "https://a.example/b", "service": "../../etc"}', 422, "service name"),
        (b"{" + b" " * (1024 * 1024 + 1) + b"}", 413, "larger than 1048576 bytes"),
    ],
)
def test_hostile_bodies_get_4xx_from_the_real_server(
    guarded: Stack, body: bytes, status: int, message: str
) -> None:
    code, _, raw = raw_request(
        guarded, "POST", "/deployments", body, Content_Type="application/json", **AUTH
    )
    assert code == status, raw[:300]
    assert message in raw.decode("utf-8", "replace")
    assert jobs(guarded) == []


def test_tokens_guard_mutations_and_the_rate_limit_holds_across_replicas(
    guarded: Stack, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "site", {"index.html": "hi"})
    body = {"repo_url": f"file://{repo}", "service": "limited"}
    denied = httpx.post(f"{guarded.url}/deployments", json=body)
    assert denied.status_code == 401
    assert denied.json()["error"]["message"] == "a valid API token is required"
    wrong = httpx.post(
        f"{guarded.url}/deployments", json=body, headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 401
    assert httpx.put(f"{guarded.url}/fleet", json={"paused": True}).status_code == 401
    assert jobs(guarded) == []

    # A second uploader replica on the same Redis shares the token's budget.
    port, sites_port = free_ports(2)
    replica = spawn(
        "uploader",
        {**guarded.env, "BUILDQ_PORT": str(port), "BUILDQ_SITES_PORT": str(sites_port)},
        guarded.logs / "uploader-replica.log",
    )
    try:
        wait_for_port(port, 30, replica)
        # The limit counts per fixed one-minute window: four requests that straddle a
        # window's end would be counted in two. Start well inside a window.
        if time.time() % 60 > 50:
            time.sleep(60 - time.time() % 60 + 0.5)
        urls = [guarded.url, guarded.url, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}"]
        codes = []
        for url in urls:
            response = httpx.post(f"{url}/deployments", json=body, headers=RATED)
            codes.append(response.status_code)
        assert codes == [202, 202, 202, 429]
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert "per minute" in response.json()["error"]["message"]
        other = httpx.post(
            f"http://127.0.0.1:{port}/deployments",
            json=body,
            headers={"Authorization": "Bearer other"},
        )
        assert other.status_code == 202  # another token, its own budget
    finally:
        stop(replica)
    assert len(jobs(guarded)) == 4


@pytest.mark.slow
def test_serving_never_leaves_the_deployment_prefix(guarded: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "served", {"index.html": "<h1>home</h1>", "a/b.txt": "b"})
    response = httpx.post(
        f"{guarded.url}/deployments",
        json={"repo_url": f"file://{repo}", "service": "served"},
        headers={"Authorization": "Bearer other"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert guarded.wait(job_id)["status"] == "live"

    site = {"Host": f"served.localhost:{guarded.sites_port}"}
    preview = {"Host": f"{job_id}.preview.localhost:{guarded.sites_port}"}
    ok = raw_request(guarded, "GET", "/a/b.txt", port=guarded.sites_port, **site)
    assert ok[0] == 200
    assert ok[1]["x-content-type-options"] == "nosniff"
    for path, host in [
        ("/../../deployments", site),
        ("/..%2f..%2fdeployments", site),
        ("/%2e%2e/%2e%2e/sources/" + job_id + ".tar.zst", site),
        ("/%2E%2E%2F%2E%2E%2Fsources%2F" + job_id + ".tar.zst", site),
        ("/a/%2e%2e/%2e%2e/%2e%2e/deployments/" + job_id + ".json", site),
        ("/..\\..\\deployments", site),
        ("/%5c..%5c..%5cdeployments", site),
        ("/a%00.txt", site),
        ("//etc/passwd", site),
        ("/%ff%fe", site),
        ("/..%2f..%2fsources%2f" + job_id + ".tar.zst", preview),
        ("/deployments", site),  # no API route is reachable on a site's origin
        ("/a/b.txt", {"Host": f"{job_id}%2f..%2f.preview.localhost"}),
        ("/a/b.txt", {"Host": "served.evil.example"}),
        ("/a/b.txt", {"Host": "127.0.0.1"}),
    ]:
        status, _, raw = raw_request(guarded, "GET", path, port=guarded.sites_port, **host)
        assert status in (400, 404), (path, host, status)
        assert b'"status"' not in raw  # never the saved record
        assert not raw.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd"))  # never a source archive
        assert b"root:" not in raw
    # The API origin serves no site bytes: it redirects to the site's own origin.
    moved = raw_request(guarded, "GET", "/sites/served/a/b.txt")
    assert moved[0] == 308
    assert moved[1]["location"] == f"http://served.localhost:{guarded.sites_port}/a/b.txt"
    for path in ("/sites/..%2fsites/index.html", "/preview/..%2f..%2fdeployments/x"):
        assert raw_request(guarded, "GET", path)[0] == 404, path
    assert raw_request(guarded, "POST", "/a/b.txt", port=guarded.sites_port, **site)[0] == 405


def slack_headers(timestamp: str, signature: str) -> dict[str, Any]:
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def test_malformed_chatops_signatures_are_401_never_500(guarded: Stack) -> None:
    body = b"command=%2Fbuildq&text=lock+web&team_id=T1&user_id=U-mallory&trigger_id=t1"
    now = str(int(time.time()))
    good = (
        "v0="
        + hmac.new(SLACK_SECRET.encode(), f"v0:{now}:".encode() + body, hashlib.sha256).hexdigest()
    )
    cases: list[tuple[bytes, bytes]] = [
        (now.encode(), b""),
        (now.encode(), b"v1=" + good[3:].encode()),
        (now.encode(), b"v0="),
        (now.encode(), b"v0=" + b"0" * 64),
        (now.encode(), "v0=\u00e9\u00e9".encode()),
        (now.encode(), good.encode() + b"00"),
        (now.encode(), good.upper().encode()),
        (b"9" * 5000, good.encode()),
        (b"-1", good.encode()),
        (b"1e3", good.encode()),
        ("\u0661\u0662".encode(), good.encode()),  # Arabic-Indic digits
        (b"\xff\xfe", good.encode()),
        (str(int(time.time()) - 3600).encode(), good.encode()),
    ]
    for timestamp, signature in cases:
        response = httpx.post(
            f"{guarded.url}/chatops",
            content=body,
            headers=[
                (b"X-Slack-Request-Timestamp", timestamp),
                (b"X-Slack-Signature", signature),
                (b"Content-Type", b"application/x-www-form-urlencoded"),
            ],
        )
        assert response.status_code == 401, (timestamp[:20], signature[:20], response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        # ChatOps' own check refused it: the API-token middleware lets /chatops through.
        assert response.json()["error"]["message"] != "a valid API token is required"
    locks = httpx.get(f"{guarded.url}/locks", headers=AUTH).json()
    assert "mallory" not in str(locks)
    # The control: the same request, correctly signed, is accepted and executed.
    accepted = httpx.post(
        f"{guarded.url}/chatops",
        content=body,
        headers={**slack_headers(now, good)},
    )
    assert accepted.status_code == 200, accepted.text
    assert "mallory" in str(httpx.get(f"{guarded.url}/locks", headers=AUTH).json())
