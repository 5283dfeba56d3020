"""/locks and /staging routes on fakeredis: status codes, owners, admins, error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.jobs import JobStore
from shared.keys import Keys
from shared.locks import DeployLock
from shared.settings import Settings, load_settings
from uploader import team_api
from uploader.errors import install_error_handlers
from uploader.state import Services

pytestmark = pytest.mark.anyio


@pytest.fixture
def team_settings() -> Settings:
    return load_settings({}, admins="root", lock_default_ttl_s=600)


@pytest.fixture
async def client(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, team_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(team_api.router)
    store = JobStore(redis, keys, team_settings)
    app.state.services = Services(team_settings, keys, redis, None, store)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://buildq.test") as client:
        yield client


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


async def test_put_lock_takes_it_with_the_default_ttl_and_hides_the_token(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    response = await client.put("/locks/web", json={"owner": "alice", "reason": "demo"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["service"], body["owner"], body["reason"], body["task"]) == (
        "web",
        "alice",
        "demo",
        "manual",
    )
    assert body["expires_at"] - body["acquired_at"] == 600_000
    assert "token" not in body
    assert 590_000 < await redis.pttl(keys.lock("web")) <= 600_000
    listed = (await client.get("/locks")).json()
    assert [(x["service"], x["owner"]) for x in listed] == [("web", "alice")]


async def test_put_lock_held_by_another_is_409_naming_the_holder(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/locks/web", json={"owner": "alice", "reason": "freeze", "ttl_s": 60})

    message = error(await client.put("/locks/web", json={"owner": "bob"}), 409, "conflict")
    renewed = await client.put("/locks/web", json={"owner": "alice", "ttl_s": 120})

    assert message == "web is locked by alice (freeze)"
    assert renewed.status_code == 200
    assert renewed.json()["expires_at"] - renewed.json()["acquired_at"] >= 120_000


async def test_a_person_cannot_take_a_lock_a_deploy_holds(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    deployer = DeployLock(redis, keys, events_max=100, owner="deployer-1")
    await deployer.lock("web", task="deploy job-1")

    message = error(await client.put("/locks/web", json={"owner": "alice"}), 409, "conflict")

    assert message == "web is locked by deployer-1"


async def test_delete_lock_by_owner_other_and_admin_force(client: httpx.AsyncClient) -> None:
    await client.put("/locks/web", json={"owner": "alice"})

    not_owner = await client.delete("/locks/web", params={"owner": "bob"})
    not_admin = await client.delete("/locks/web", params={"owner": "bob", "force": "true"})
    forced = await client.delete("/locks/web", params={"owner": "root", "force": "true"})
    gone = await client.delete("/locks/web", params={"owner": "alice"})

    assert "only they (or an admin) can unlock" in error(not_owner, 403, "forbidden")
    assert "not an admin" in error(not_admin, 403, "forbidden")
    assert forced.status_code == 200
    assert forced.json()["lock"]["owner"] == "alice"
    assert error(gone, 404, "not_found") == "web is not locked"


async def test_get_lock_shows_holder_last_holder_and_fence(client: httpx.AsyncClient) -> None:
    await client.put("/locks/web", json={"owner": "alice"})
    await client.delete("/locks/web", params={"owner": "alice"})
    await client.put("/locks/web", json={"owner": "bob"})

    body = (await client.get("/locks/web")).json()

    assert body["holder"]["owner"] == "bob"
    assert (body["last"]["owner"], body["last"]["end"]) == ("alice", "released")
    assert body["fence"] == 2


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("PUT", "/locks/Web", {"json": {"owner": "alice"}}),
        ("PUT", "/locks/web", {"json": {"owner": "al ice"}}),
        ("PUT", "/locks/web", {"json": {"owner": "alice", "ttl_s": 0}}),
        ("PUT", "/locks/web", {"json": {"owner": "alice", "extra": 1}}),
        ("DELETE", "/locks/a*", {"params": {"owner": "alice"}}),
        ("DELETE", "/locks/web", {}),
        ("PUT", "/staging/QA", {"json": {"owner": "alice"}}),
        ("PUT", "/staging/qa", {"json": {"owner": "alice", "branch": "-x"}}),
    ],
)
async def test_invalid_requests_are_422_and_touch_nothing(
    client: httpx.AsyncClient,
    redis: fakeredis.FakeAsyncRedis,
    method: str,
    path: str,
    kwargs: dict[str, object],
) -> None:
    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    error(response, 422, "invalid")
    assert await redis.dbsize() == 0


async def test_staging_claim_conflict_release_and_list(client: httpx.AsyncClient) -> None:
    claimed = await client.put("/staging/qa", json={"owner": "alice", "branch": "main"})
    conflict = await client.put("/staging/qa", json={"owner": "bob"})
    listed = (await client.get("/staging")).json()
    not_owner = await client.delete("/staging/qa", params={"owner": "bob"})
    released = await client.delete("/staging/qa", params={"owner": "alice"})
    missing = await client.delete("/staging/qa", params={"owner": "alice"})

    assert claimed.status_code == 200
    assert (claimed.json()["owner"], claimed.json()["expires_at"]) == ("alice", None)
    assert error(conflict, 409, "conflict") == "qa is claimed by alice for main"
    assert [(c["env"], c["owner"], c["branch"]) for c in listed] == [("qa", "alice", "main")]
    error(not_owner, 403, "forbidden")
    assert released.json()["claim"]["owner"] == "alice"
    error(missing, 404, "not_found")


async def test_staging_claim_with_ttl_expires(client: httpx.AsyncClient) -> None:
    response = await client.put("/staging/qa", json={"owner": "alice", "ttl_s": 3600})

    body = response.json()
    assert body["expires_at"] - body["claimed_at"] == 3_600_000
