"""Hostile HTTP bodies and headers never reach a route and are never a 500.

The real middleware and routers on a bare app over fakeredis (no lifespan): body
cap, strict JSON, API tokens, the per-token rate limit and the repository host
policy, each asserting the refusal, its message, and that no job was created.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import api
from uploader.errors import install_error_handlers
from uploader.jsonbody import parse_json_body
from uploader.security import install_security
from uploader.state import Services

pytestmark = pytest.mark.anyio

REPO = "https://github.com/team/site.git"
TOKEN = "s3cret-token-\u00e9".encode()  # UTF-8 bytes on the wire, compared as bytes


def make_app(redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, settings)
    app.include_router(api.router)
    store = JobStore(redis, keys, settings)
    app.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    return app


@pytest.fixture
def secured() -> Settings:
    return load_settings(
        {
            "BUILDQ_API_TOKENS": "other:deployer=other-token, joe:admin=s3cret-token-\u00e9",
            "BUILDQ_SUBMIT_RATE_PER_MIN": "3",
            "BUILDQ_MAX_BODY_BYTES": "4096",
            "BUILDQ_REPO_HOST_DENYLIST": "*.evil.example",
        }
    )


async def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
    )


@pytest.fixture
async def open_client(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(make_app(redis, keys, settings)) as client:
        yield client


@pytest.fixture
async def locked_client(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, secured: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(make_app(redis, keys, secured)) as client:
        yield client


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert message in body["error"]["message"], body


async def no_jobs(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    assert await redis.zcard(keys.jobs) == 0
    assert await redis.llen(keys.ingest) == 0


RAW_BODIES: list[tuple[str, bytes, int, str]] = [
    ("deep array", b"[" * 100_000, 400, "nested too deeply"),
    ("deep object", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, "nested"),
    ("moderately deep", b'{"repo_url":' + b"[" * 40 + b"]" * 40 + b"}", 400, "deeper than 32"),
    ("NaN", b'{"repo_url": NaN}', 400, "NaN is not a number"),
    ("Infinity", b'{"repo_url": "x", "ref": Infinity}', 400, "Infinity"),
    ("-Infinity", b'{"repo_url": -Infinity}', 400, "-Infinity"),
    ("overflowing float", b'{"repo_url": 1e999}', 400, "out of range"),
    ("huge integer", b'{"repo_url": ' + b"9" * 5000 + b"}", 400, "invalid JSON"),
    ("duplicate keys", b'{"repo_url": "https://a/b", "repo_url": "ext::sh"}', 400, "duplicate"),
    ("lone surrogate", b'{"repo_url": "https://h/\\ud800"}', 400, "surrogate"),
    ("surrogate key", b'{"\\udfff": 1, "repo_url": "x"}', 400, "surrogate"),
    ("latin-1 bytes", b'{"repo_url": "caf\xe9"}', 400, "UTF-8"),
    ("utf-16", '{"repo_url": "x"}'.encode("utf-16"), 400, "UTF-8"),
    ("truncated", b'{"repo_url": "x"', 400, "invalid JSON"),
    ("top-level array", b'["https://github.com/a/b"]', 422, "JSON object"),
    ("top-level string", b'"https://github.com/a/b"', 422, "JSON object"),
    ("top-level null", b"null", 422, "JSON object"),
    ("top-level number", b"1", 422, "JSON object"),
]


@pytest.mark.parametrize("case", RAW_BODIES, ids=[c[0] for c in RAW_BODIES])
async def test_malformed_json_is_a_4xx_and_creates_nothing(
    open_client: httpx.AsyncClient,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    case: tuple[str, bytes, int, str],
) -> None:
    _, body, status, message = case
    response = await open_client.post(
        "/deployments", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, status, message)
    # Without a JSON media type (and no token) a write is refused before parsing.
    response = await open_client.post("/deployments", content=body)
    assert_error(response, 415, "Content-Type: application/json")
    await no_jobs(redis, keys)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"repo_url": REPO, "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"repo_url": REPO, "build": {"command": "x", "shell": "bash"}}, "build.shell"),
        ({"repo_url": REPO, "service": "Bad_Name"}, "invalid service name"),
        ({"repo_url": REPO, "service": "-x"}, "invalid service name"),
        ({"repo_url": ["x"]}, "repo_url"),
        ({}, "name a repo_url, or the service of a registered repository"),
    ],
)
async def test_unknown_fields_and_bad_names_are_422(
    open_client: httpx.AsyncClient,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    body: dict[str, Any],
    message: str,
) -> None:
    assert_error(await open_client.post("/deployments", json=body), 422, message)
    await no_jobs(redis, keys)


async def test_body_over_the_cap_is_413_by_length_and_by_stream(
    locked_client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    auth = {"authorization": "Bearer other-token"}
    big = b'{"repo_url": "' + b"a" * 5000 + b'"}'
    assert_error(await locked_client.post("/deployments", content=big, headers=auth), 413, "4096")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(10):
            yield b" " * 1000

    response = await locked_client.post("/deployments", content=chunks(), headers=auth)
    assert_error(response, 413, "larger than 4096 bytes")
    bogus = {**auth, "content-length": "12abc"}
    assert_error(await locked_client.post("/deployments", content=b"{}", headers=bogus), 400, "")
    await no_jobs(redis, keys)


async def test_default_body_cap_is_one_mebibyte(settings: Settings) -> None:
    assert settings.max_body_bytes == 1024 * 1024


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic b3RoZXItdG9rZW4=",
        "bearer other-tokenX",
        "Bearer other-toke",
        "Bearer " + "x" * 5000,
        "Bearer s3cret-token-e",  # the ASCII look-alike of the configured non-ASCII token
    ],
)
async def test_mutating_routes_need_a_valid_token(
    locked_client: httpx.AsyncClient,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    authorization: str | None,
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    response = await locked_client.post("/deployments", json={"repo_url": REPO}, headers=headers)
    assert_error(response, 401, "a valid API token is required")
    assert response.headers["www-authenticate"].startswith("Bearer")
    await no_jobs(redis, keys)


async def test_valid_tokens_including_non_ascii_bytes_are_accepted_and_reads_need_one(
    locked_client: httpx.AsyncClient,
) -> None:
    for token in (b"other-token", TOKEN):
        headers = {"authorization": b"Bearer " + token}
        response = await locked_client.post(
            "/deployments", json={"repo_url": REPO, "service": "site"}, headers=headers
        )
        assert response.status_code == 202, response.text
    assert (await locked_client.get("/deployments")).status_code == 401
    read = await locked_client.get("/deployments", headers={"authorization": "Bearer other-token"})
    assert read.status_code == 200


async def test_submissions_are_rate_limited_per_token_with_retry_after(
    locked_client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first = {"authorization": "Bearer other-token"}
    for _ in range(3):
        ok = await locked_client.post("/deployments", json={"repo_url": REPO}, headers=first)
        assert ok.status_code == 202, ok.text
    limited = await locked_client.post("/deployments", json={"repo_url": REPO}, headers=first)
    assert_error(limited, 429, "more than 3 submissions per minute")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert await redis.zcard(keys.jobs) == 3
    # Another token has its own budget; the counter lives in Redis, not in memory.
    other = {"authorization": b"Bearer " + TOKEN}
    ok = await locked_client.post("/deployments", json={"repo_url": REPO}, headers=other)
    assert ok.status_code == 202
    counters = [k async for k in redis.scan_iter(match=f"{keys.prefix}:ratelimit:*")]
    assert len(counters) == 2
    assert not any("other-token" in k for k in counters)


async def test_denied_hosts_and_bad_urls_are_refused_before_the_route(
    locked_client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    auth = {"authorization": "Bearer other-token"}
    for url, message in [
        ("https://git.evil.example/a/b", "denied by the operator"),
        ("https://127.1/a/b", "non-global address 127.0.0.1"),
        ("ext::sh -c touch% /tmp/pwned", "whitespace"),
    ]:
        response = await locked_client.post("/deployments", json={"repo_url": url}, headers=auth)
        assert_error(response, 422, message)
    await no_jobs(redis, keys)


async def test_refusals_before_the_route_do_not_spend_the_rate_budget(
    locked_client: httpx.AsyncClient,
) -> None:
    auth = {"authorization": "Bearer other-token"}
    for _ in range(5):
        await locked_client.post("/deployments", content=b"[", headers=auth)
    ok = await locked_client.post("/deployments", json={"repo_url": REPO}, headers=auth)
    assert ok.status_code == 202


def test_parse_json_body_accepts_a_plain_object() -> None:
    assert parse_json_body(b'{"repo_url": "https://a/b", "n": [1, 2.5, null]}') == {
        "repo_url": "https://a/b",
        "n": [1, 2.5, None],
    }
