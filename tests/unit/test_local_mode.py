"""Local mode (no tokens) and cross-site requests: trusted Host values, JSON-only
writes, foreign origins, the local identity, per-identity limits, and the refusal to
listen beyond loopback without tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.core.errors import ConfigError
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import auth
from uploader.app import create_app
from uploader.state import Services

pytestmark = pytest.mark.anyio

JOB = "b" * 20
REPO = "https://github.com/team/site.git"
ROOT = Path(__file__).resolve().parents[2]


def make_app(redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings) -> FastAPI:
    app = create_app(settings, run_ingest=False).app
    store = JobStore(redis, keys, settings)
    app.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    return app


@pytest.fixture
async def local(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setattr(auth.getpass, "getuser", lambda: "jo")
    settings = load_settings({}, api_url="http://buildq.internal:9000", submit_rate_per_min=2)
    app = make_app(redis, keys, settings)
    await app.state.services.store.submit(JOB, service="web", repo_url=REPO)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "[::1", "a:b:c"]
)
async def test_a_rebinding_host_is_400(local: httpx.AsyncClient, host: str) -> None:
    response = await local.get("/queue", headers={"Host": host})

    assert response.status_code == 400, response.text
    assert "not an allowed host" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1234", "[::1]:8000", "buildq.internal:1"]
)
async def test_loopback_names_and_the_api_urls_host_are_allowed(
    local: httpx.AsyncClient, host: str
) -> None:
    assert (await local.get("/queue", headers={"Host": host})).status_code == 200


async def test_allowed_hosts_is_a_setting(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    settings = load_settings({"BUILDQ_ALLOWED_HOSTS": "*.corp.example"})
    transport = httpx.ASGITransport(app=make_app(redis, keys, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://a.corp.example") as c:
        assert (await c.get("/queue")).status_code == 200
        assert (await c.get("/queue", headers={"Host": "localhost"})).status_code == 400


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {},
    ],
)
async def test_a_simple_cross_site_cancel_is_415_and_cancels_nothing(
    local: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys, headers: dict[str, str]
) -> None:
    response = await local.post(f"/deployments/{JOB}/cancel", content=b"", headers=headers)

    assert response.status_code == 415, response.text
    assert await redis.hget(keys.job(JOB), "status") == Status.ACCEPTED.value


async def test_a_json_cancel_from_the_cli_works(local: httpx.AsyncClient) -> None:
    response = await local.post(f"/deployments/{JOB}/cancel", json={})

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example:8000",
        "http://web.localhost:8001",  # a published site
        "http://127.0.0.1:8001",  # the sites listener
    ],
)
async def test_a_foreign_origin_may_not_change_anything(
    local: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys, origin: str
) -> None:
    response = await local.post(f"/deployments/{JOB}/cancel", json={}, headers={"Origin": origin})
    fleet = await local.put("/fleet", json={"paused": True}, headers={"Origin": origin})

    assert response.status_code == fleet.status_code == 403, response.text
    assert await redis.hget(keys.job(JOB), "status") == Status.ACCEPTED.value
    assert await redis.hget(keys.fleet, "paused") in (None, "0")


async def test_the_apis_own_origin_may(local: httpx.AsyncClient) -> None:
    for origin in ("http://127.0.0.1:8000", "http://localhost:8000"):
        response = await local.put("/fleet", json={"paused": False}, headers={"Origin": origin})
        assert response.status_code == 200, response.text


async def test_the_local_caller_is_an_admin_named_after_the_os_user(
    local: httpx.AsyncClient,
) -> None:
    mine = await local.put("/locks/web", json={})
    spoofed = await local.put("/locks/api", json={"owner": "bob"})

    assert mine.json()["owner"] == "jo"
    assert spoofed.status_code == 403


async def test_local_submissions_are_rate_limited(
    local: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    codes = [(await local.post("/deployments", json={"repo_url": REPO})).status_code for _ in "abc"]

    assert codes == [202, 202, 429]
    assert [k async for k in redis.scan_iter(match=f"{keys.prefix}:ratelimit:jo:*")]


async def test_idempotency_keys_belong_to_the_caller(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    settings = load_settings({}, api_tokens="alice:deployer=ta,bob:deployer=tb")
    transport = httpx.ASGITransport(app=make_app(redis, keys, settings))
    body = {"repo_url": REPO}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        key = {"Idempotency-Key": "same-key"}
        alice = await c.post(
            "/deployments", json=body, headers={**key, "authorization": "Bearer ta"}
        )
        again = await c.post(
            "/deployments", json=body, headers={**key, "authorization": "Bearer ta"}
        )
        bob = await c.post("/deployments", json=body, headers={**key, "authorization": "Bearer tb"})

    assert (alice.status_code, again.status_code, bob.status_code) == (202, 200, 202)
    assert alice.json()["id"] == again.json()["id"] != bob.json()["id"]


def test_admins_setting_is_gone_with_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"BUILDQ_ADMINS is no longer supported: .*name:admin"):
        load_settings({"BUILDQ_ADMINS": "root"})


def _run_uploader(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDQ_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "uploader"],
        env={**clean, "BUILDQ_DATA_DIR": str(tmp_path), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_listening_beyond_loopback_without_tokens_refuses_to_start(
    tmp_path: Path, host: str
) -> None:
    done = _run_uploader(tmp_path, BUILDQ_HOST=host, BUILDQ_PORT="1")

    assert done.returncode == 2, done.stderr
    assert f"refusing to listen on {host} without API tokens" in done.stderr
    assert "BUILDQ_API_TOKENS" in done.stderr


def test_a_bare_token_refuses_to_start_and_shows_the_new_form(tmp_path: Path) -> None:
    done = _run_uploader(tmp_path, BUILDQ_API_TOKENS="old-style-secret", BUILDQ_PORT="1")

    assert done.returncode == 2, done.stderr
    assert "is a bare token" in done.stderr
    assert "name:role=token" in done.stderr
    assert "old-style-secret" not in done.stderr
