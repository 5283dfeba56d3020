"""/locks and /staging routes on fakeredis: owners from the caller, roles, force,
status codes and the error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.coord.lockbook import LockBook
from shared.coord.locks import DeployLock
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import team_api
from uploader.errors import install_error_handlers
from uploader.security import install_security
from uploader.state import Services

pytestmark = pytest.mark.anyio

TOKENS = {
    "alice": "alice:deployer=tok-alice",
    "bob": "bob:deployer=tok-bob",
    "root": "root:admin=tok-root",
    "docs": "docs:deployer:docs-*=tok-docs",
    "eve": "eve:viewer=tok-eve",
    "deployer-1": "deployer-1:deployer=tok-worker-name",  # named like a worker id
}


def as_(name: str) -> dict[str, str]:
    """The Authorization header of ``name``'s token."""
    return {"Authorization": f"Bearer tok-{'worker-name' if name == 'deployer-1' else name}"}


@pytest.fixture
def team_settings() -> Settings:
    return load_settings({}, api_tokens=",".join(TOKENS.values()), lock_default_ttl_s=600)


@pytest.fixture
async def client(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, team_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, team_settings)
    app.include_router(team_api.router)
    store = JobStore(redis, keys, team_settings)
    app.state.services = Services(team_settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://buildq.test", headers=as_("alice")
    ) as client:
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
    response = await client.put("/locks/web", json={"reason": "demo"})

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
    await client.put("/locks/web", json={"reason": "freeze", "ttl_s": 60})

    message = error(await client.put("/locks/web", json={}, headers=as_("bob")), 409, "conflict")
    renewed = await client.put("/locks/web", json={"owner": "alice", "ttl_s": 120})

    assert message == "web is locked by alice (freeze)"
    assert renewed.status_code == 200
    assert renewed.json()["expires_at"] - renewed.json()["acquired_at"] >= 120_000


async def test_a_person_cannot_take_a_lock_a_deploy_holds(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    deployer = DeployLock(redis, keys, events_max=100, owner="deployer-1")
    await deployer.lock("web", task="deploy job-1")

    message = error(await client.put("/locks/web", json={}), 409, "conflict")

    assert message == "web is locked by deployer-1"


async def test_delete_lock_by_owner_other_and_admin_force(client: httpx.AsyncClient) -> None:
    await client.put("/locks/web", json={})

    not_owner = await client.delete("/locks/web", headers=as_("bob"))
    not_admin = await client.delete("/locks/web", params={"force": "true"}, headers=as_("bob"))
    admin_unforced = await client.delete("/locks/web", headers=as_("root"))
    forced = await client.delete("/locks/web", params={"force": "true"}, headers=as_("root"))
    gone = await client.delete("/locks/web")

    assert "only they (or an admin, with force=true) can unlock" in error(
        not_owner, 403, "forbidden"
    )
    assert "needs the admin role" in error(not_admin, 403, "forbidden")
    error(admin_unforced, 403, "forbidden")
    assert forced.status_code == 200
    assert forced.json()["lock"]["owner"] == "alice"
    assert error(gone, 404, "not_found") == "web is not locked"


async def test_owner_naming_someone_else_is_403_and_the_same_name_is_accepted(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    spoofed_put = await client.put("/locks/web", json={"owner": "bob"})
    spoofed_claim = await client.put("/staging/qa", json={"owner": "bob"})
    assert await redis.exists(keys.lock("web")) == 0
    own = await client.put("/locks/web", json={"owner": "alice"})
    await client.put("/locks/api", json={}, headers=as_("bob"))
    spoofed_delete = await client.delete("/locks/api", params={"owner": "bob"})
    spoofed_force = await client.delete("/locks/api", params={"owner": "root", "force": "true"})

    assert "owner='bob' names someone else" in error(spoofed_put, 403, "forbidden")
    error(spoofed_claim, 403, "forbidden")
    assert own.status_code == 200
    assert own.json()["owner"] == "alice"
    error(spoofed_delete, 403, "forbidden")
    error(spoofed_force, 403, "forbidden")
    assert (await client.get("/locks/api")).json()["holder"]["owner"] == "bob"


async def test_a_deployer_may_lock_only_its_services_and_a_viewer_nothing(
    client: httpx.AsyncClient,
) -> None:
    docs = await client.put("/locks/docs-site", json={}, headers=as_("docs"))
    web = await client.put("/locks/web", json={}, headers=as_("docs"))
    viewer = await client.put("/locks/web", json={}, headers=as_("eve"))
    viewer_reads = await client.get("/locks", headers=as_("eve"))

    assert docs.status_code == 200
    assert docs.json()["owner"] == "docs"
    assert "docs may lock only docs-*, not web" in error(web, 403, "forbidden")
    assert "viewer" in error(viewer, 403, "forbidden")
    assert viewer_reads.status_code == 200


async def test_a_deploy_lock_is_released_only_by_an_admin_with_force_and_recorded(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    deployer = DeployLock(redis, keys, events_max=100, owner="deployer-1")
    await deployer.lock("web", task="deploy job-1")

    by_worker_name = await client.delete("/locks/web", headers=as_("deployer-1"))
    by_deployer_force = await client.delete("/locks/web", params={"force": "true"})
    by_admin = await client.delete("/locks/web", headers=as_("root"))
    still = await LockBook(redis, keys, events_max=100).holder("web")
    forced = await client.delete("/locks/web", params={"force": "true"}, headers=as_("root"))
    last = (await client.get("/locks/web")).json()["last"]

    assert "for a running deploy; only an admin with force=true" in error(
        by_worker_name, 403, "forbidden"
    )
    error(by_deployer_force, 403, "forbidden")
    error(by_admin, 403, "forbidden")
    assert still is not None
    assert still.owner == "deployer-1"
    assert forced.status_code == 200, forced.text
    assert (last["owner"], last["end"], last["released_by"]) == ("deployer-1", "forced", "root")


async def test_get_lock_shows_holder_last_holder_and_fence(client: httpx.AsyncClient) -> None:
    await client.put("/locks/web", json={"owner": "alice"})
    await client.delete("/locks/web", params={"owner": "alice"})
    await client.put("/locks/web", json={}, headers=as_("bob"))

    body = (await client.get("/locks/web")).json()

    assert body["holder"]["owner"] == "bob"
    assert (body["last"]["owner"], body["last"]["end"]) == ("alice", "released")
    assert body["fence"] == 2


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("PUT", "/locks/Web", {"json": {"owner": "alice"}}),
        ("PUT", "/locks/web", {"json": {"reason": 5}}),
        ("PUT", "/locks/web", {"json": {"owner": "alice", "ttl_s": 0}}),
        ("PUT", "/locks/web", {"json": {"owner": "alice", "extra": 1}}),
        ("DELETE", "/locks/a*", {"params": {"owner": "alice"}}),
        ("DELETE", "/locks/web", {"params": {"force": "maybe"}}),
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
    conflict = await client.put("/staging/qa", json={}, headers=as_("bob"))
    listed = (await client.get("/staging")).json()
    not_owner = await client.delete("/staging/qa", headers=as_("bob"))
    not_admin = await client.delete("/staging/qa", params={"force": "true"}, headers=as_("bob"))
    released = await client.delete("/staging/qa", params={"owner": "alice"})
    missing = await client.delete("/staging/qa")

    assert claimed.status_code == 200
    assert (claimed.json()["owner"], claimed.json()["expires_at"]) == ("alice", None)
    assert error(conflict, 409, "conflict") == "qa is claimed by alice for main"
    assert [(c["env"], c["owner"], c["branch"]) for c in listed] == [("qa", "alice", "main")]
    error(not_owner, 403, "forbidden")
    assert "needs the admin role" in error(not_admin, 403, "forbidden")
    assert released.json()["claim"]["owner"] == "alice"
    error(missing, 404, "not_found")


async def test_staging_claim_with_ttl_expires(client: httpx.AsyncClient) -> None:
    response = await client.put("/staging/qa", json={"owner": "alice", "ttl_s": 3600})

    body = response.json()
    assert body["expires_at"] - body["claimed_at"] == 3_600_000
