"""uploader API routes and error shape, on fakeredis, without the app's lifespan.

The real lifespan connects to Redis and S3 and starts the ingest loop; these tests
mount the same routers and error handlers on a bare app whose services use
fakeredis, so request validation and the JSON error contract run in milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.core.settings import Settings
from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import api
from uploader.errors import install_error_handlers
from uploader.security import install_security
from uploader.state import Services

pytestmark = pytest.mark.anyio

JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")
REPO = "https://github.com/Team/My_Site.git"


@pytest.fixture
def app(redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, settings)  # local mode: the caller is the local admin
    app.include_router(api.router)
    store = JobStore(redis, keys, settings)
    # No route under test touches storage; None makes any accidental use fail loudly.
    app.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str, message: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert message in body["error"]["message"]


async def deploy(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/deployments", json={"repo_url": REPO, **body})


async def test_post_deployment_accepts_and_enqueues(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    response = await deploy(client)

    assert response.status_code == 202
    body = response.json()
    assert JOB_ID_RE.fullmatch(body["id"])
    assert body["status"] == "accepted"
    assert body["service"] == "my-site"
    assert body["seq"] == 1
    assert body["links"]["self"] == f"http://127.0.0.1:8000/deployments/{body['id']}"
    assert body["links"]["site"] == "http://my-site.localhost:8001/"
    assert body["links"]["preview"] == f"http://{body['id']}.preview.localhost:8001/"
    assert await redis.lrange(keys.ingest, 0, -1) == [body["id"]]


async def test_post_deployment_stores_the_request_on_the_record(
    client: httpx.AsyncClient,
) -> None:
    response = await deploy(
        client,
        service="blog",
        ref="release/v2",
        root_dir="./site/",
        build={"command": "make", "output": "./_site", "env": {"A": "1"}},
    )
    job_id = response.json()["id"]

    record = (await client.get(f"/deployments/{job_id}")).json()

    assert record["service"] == "blog"
    assert record["ref"] == "release/v2"
    assert record["root_dir"] == "site"
    # The command and env values stay private (names kept): never in API answers.
    assert record["build"] == {"command": "***", "output": "_site", "env": {"A": "***"}}
    assert record["status"] == "accepted"
    assert set(record["phases"]) == {"accepted"}


async def test_repeated_submissions_of_a_service_get_increasing_seq(
    client: httpx.AsyncClient,
) -> None:
    seqs = [(await deploy(client)).json()["seq"] for _ in range(3)]

    assert seqs == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"repo_url": "http://github.com/o/r"}, "https://"),
        ({"repo_url": "https://u:tok@github.com/o/r"}, "credentials"),
        ({"repo_url": "ext::sh"}, "remote-helper"),
        ({"repo_url": "file:///srv/repo"}, "local repositories"),
        ({"repo_url": REPO, "ref": "--upload-pack=x"}, "invalid ref"),
        ({"repo_url": REPO, "service": "Bad_Name"}, "invalid service name"),
        ({"repo_url": REPO, "root_dir": "../up"}, "root_dir"),
        ({"repo_url": REPO, "build": {"output": "../../etc"}}, "build output"),
        ({"repo_url": REPO, "bogus": 1}, "bogus"),
        ({"repo_url": REPO, "build": {"shell": "bash"}}, "build.shell"),
        ({"repo_url": REPO, "build": {"env": {"LD_PRELOAD": "/x.so"}}}, "LD_PRELOAD is a loader"),
        ({"repo_url": REPO, "build": {"env": {"LD_AUDIT": "/x.so"}}}, "LD_AUDIT is a loader"),
        ({"repo_url": REPO, "build": {"env": {"PYTHONPATH": "/x"}}}, "PYTHONPATH is a loader"),
        ({"repo_url": REPO, "build": {"env": {"BUILDQ_JOB_ID": "x"}}}, "reserved"),
        ({"repo_url": REPO, "build": {"env": {f"V{i}": "x" for i in range(65)}}}, "build.env"),
        ({"repo_url": REPO, "build": {"env": {"A": "x" * 40_000}}}, "larger than 32768"),
        ({"repo_url": ""}, "repo_url"),
        ({}, "repo_url"),
    ],
)
async def test_post_deployment_refuses_invalid_requests_with_json_errors(
    client: httpx.AsyncClient,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    body: dict[str, Any],
    message: str,
) -> None:
    response = await client.post("/deployments", json=body)

    assert_error(response, 422, "invalid", message)
    assert await redis.llen(keys.ingest) == 0
    assert await redis.zcard(keys.jobs) == 0


async def test_post_deployment_refuses_a_non_json_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/deployments", content=b"repo_url=x", headers={"content-type": "text/plain"}
    )
    with_token = await client.post(
        "/deployments",
        content=b"repo_url=x",
        headers={"content-type": "text/plain", "authorization": "Bearer local"},
    )

    assert_error(response, 415, "unsupported")  # a cross-site form could send it
    assert_error(with_token, 422, "invalid")  # not a simple request: the route says why


@pytest.mark.parametrize("job_id", ["ffffffffffffffffffff", "not-a-job-id", "../../etc"])
async def test_get_unknown_deployment_is_a_json_404(client: httpx.AsyncClient, job_id: str) -> None:
    assert_error(await client.get(f"/deployments/{job_id}"), 404, "not_found")


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nowhere"), 404, "not_found")


async def test_list_deployments_is_newest_first_and_filters(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    a = (await deploy(client, service="alpha")).json()["id"]
    b = (await deploy(client, service="beta")).json()["id"]
    c = (await deploy(client, service="alpha")).json()["id"]
    store: JobStore = app.state.services.store
    await store.transition(a, Status.FAILED)

    everything = (await client.get("/deployments")).json()
    alpha = (await client.get("/deployments", params={"service": "alpha"})).json()
    failed = (await client.get("/deployments", params={"status": "failed"})).json()
    one = (await client.get("/deployments", params={"limit": 1})).json()

    # submissions within one millisecond tie in the index: compare as sets
    assert {r["id"] for r in everything} == {a, b, c}
    assert {r["id"] for r in alpha} == {a, c}
    assert [r["id"] for r in failed] == [a]
    assert len(one) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "exploded"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"service": "Not Valid"}, "invalid service name"),
    ],
)
async def test_list_deployments_refuses_bad_filters(
    client: httpx.AsyncClient, params: dict[str, Any], message: str
) -> None:
    assert_error(await client.get("/deployments", params=params), 422, "invalid", message)


async def test_queue_status_lists_pending_oldest_first(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await redis.lpush(keys.queue, "first", "second", "third")
    await redis.lpush(keys.active("w1"), "running")
    await redis.zadd(keys.workers, {"w1": 1})
    # Its heartbeat still says idle: the job was claimed after the last beat.
    await redis.hset(keys.worker("w1"), mapping={"kind": "deployer", "slots": 2, "busy": 0})

    body = (await client.get("/queue")).json()

    assert body["length"] == 3
    assert body["pending"] == ["first", "second", "third"]
    assert body["active"] == {"w1": ["running"]}
    assert body["workers"][0]["id"] == "w1"
    assert body["workers"][0]["busy"] == 1
    assert body["paused"] is False


async def test_healthz_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
