"""Services as records, their secrets, and deploying a known service by name: the
real app's routes and middleware on fakeredis (no S3, no ingest)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import httpx
import pytest
from cryptography.fernet import Fernet

from shared.coord.secrets import SecretStore, build_secrets
from shared.coord.services import ServiceBook, repo_identity
from shared.core.errors import ConfigError, ValidationError
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader.app import create_app
from uploader.state import Services

pytestmark = pytest.mark.anyio

KEY = Fernet.generate_key().decode()
REPO = "https://github.com/acme/web.git"
SECRET_VALUE = "s3cr3t-value-never-shown"


def make_settings(**overrides: object) -> Settings:
    return load_settings({}, secrets_key=KEY, **overrides)


async def client_for(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings
) -> httpx.AsyncClient:
    api = create_app(settings, run_ingest=False).app
    store = JobStore(redis, keys, settings)
    api.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://127.0.0.1:8000"
    )


@pytest.fixture
async def api(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(redis, keys, make_settings()) as client:
        yield client


async def test_put_registers_then_updates_a_service_keeping_its_creation_time(
    api: httpx.AsyncClient,
) -> None:
    body = {"repo_url": REPO, "build": {"command": "npm run build", "output": "dist/"}}
    created = await api.put("/services/web", json=body)
    updated = await api.put("/services/web", json={**body, "production_branch": "release"})

    assert created.status_code == 201, created.text
    assert updated.status_code == 200
    assert created.json()["production_branch"] == "main"
    assert updated.json()["production_branch"] == "release"
    assert updated.json()["created_at"] == created.json()["created_at"]
    assert updated.json()["build"] == {
        "command": "npm run build",
        "output": "dist",
        "root_dir": None,
    }
    listed = (await api.get("/services")).json()
    assert [s["name"] for s in listed] == ["web"]


@pytest.mark.parametrize(
    "body",
    [
        {"repo_url": "ssh://git@github.com/acme/web.git"},
        {"repo_url": "https://user:pw@github.com/acme/web.git"},
        {"repo_url": REPO, "production_branch": "-x"},
        {"repo_url": REPO, "production_branch": "a" * 40},
        {"repo_url": REPO, "build": {"output": "../out"}},
        {"repo_url": REPO, "preview_branches": ["feature/..x"]},
        {"repo_url": REPO, "webhook_secret": "short"},
        {"repo_url": REPO, "unknown": 1},
    ],
)
async def test_a_bad_service_is_422_and_stores_nothing(
    api: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await api.put("/services/web", json=body)

    assert response.status_code == 422, response.text
    assert (await api.get("/services")).json() == []


async def test_an_invalid_service_name_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.put("/services/Bad_Name", json={"repo_url": REPO})

    assert response.status_code == 422


async def test_the_webhook_secret_is_write_only_and_sealed(
    api: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    response = await api.put(
        "/services/web", json={"repo_url": REPO, "webhook_secret": SECRET_VALUE}
    )
    shown = await api.get("/services/web")

    assert response.json()["webhook_secret_set"] is True
    assert SECRET_VALUE not in response.text + shown.text
    stored = [str(v) for v in (await redis.hgetall(keys.services)).values()]
    stored.append(str(await redis.get(keys.hook_secret("web"))))
    assert all(SECRET_VALUE not in v for v in stored)
    kept = await api.put("/services/web", json={"repo_url": REPO})  # no secret: kept
    assert kept.json()["webhook_secret_set"] is True
    removed = await api.put("/services/web", json={"repo_url": REPO, "webhook_secret": ""})
    assert removed.json()["webhook_secret_set"] is False
    assert await redis.get(keys.hook_secret("web")) is None


async def test_get_service_shows_the_live_deployment_and_history(
    api: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await api.put("/services/web", json={"repo_url": REPO})
    deployed = await api.post("/deployments", json={"service": "web"})
    await redis.hset(keys.site("web"), mapping={"id": deployed.json()["id"], "seq": "1"})

    detail = (await api.get("/services/web")).json()

    assert detail["live"]["id"] == deployed.json()["id"]
    assert [d["id"] for d in detail["deployments"]] == [deployed.json()["id"]]
    assert (await api.get("/services/nope")).status_code == 404


async def test_a_deploy_naming_only_a_known_service_uses_its_record(
    api: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await api.put(
        "/services/web",
        json={
            "repo_url": REPO,
            "production_branch": "release",
            "build": {"command": "make", "output": "public", "root_dir": "site"},
        },
    )

    response = await api.post("/deployments", json={"service": "web"})
    pinned = await api.post("/deployments", json={"service": "web", "ref": "a" * 40})

    assert response.status_code == 202, response.text
    record = (await api.get(f"/deployments/{response.json()['id']}")).json()
    assert record["repo_url"] == REPO
    assert record["ref"] == "release"
    assert record["root_dir"] == "site"
    assert record["build"]["output"] == "public"
    assert (await api.get(f"/deployments/{pinned.json()['id']}")).json()["ref"] == "a" * 40


async def test_a_deploy_naming_an_unknown_service_without_a_url_is_422(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.post("/deployments", json={"service": "nope"})).status_code == 422
    assert (await api.post("/deployments", json={})).status_code == 422


async def test_delete_keeps_the_history_and_removes_secrets(
    api: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await api.put("/services/web", json={"repo_url": REPO, "webhook_secret": SECRET_VALUE})
    await api.put("/services/web/secrets/API_KEY", json={"value": SECRET_VALUE})
    job = (await api.post("/deployments", json={"service": "web"})).json()["id"]

    deleted = await api.request("DELETE", "/services/web", json={})

    assert deleted.status_code == 200
    assert (await api.get("/services/web")).status_code == 404
    assert (await api.get(f"/deployments/{job}")).status_code == 200
    assert await redis.exists(keys.secrets("web"), keys.hook_secret("web")) == 0
    assert (await api.request("DELETE", "/services/web", json={})).status_code == 404


async def test_secrets_list_names_and_times_never_values(api: httpx.AsyncClient) -> None:
    await api.put("/services/web", json={"repo_url": REPO})

    put = await api.put("/services/web/secrets/API_KEY", json={"value": SECRET_VALUE})
    listed = await api.get("/services/web/secrets")

    assert put.status_code == 200, put.text
    assert [s["name"] for s in listed.json()] == ["API_KEY"]
    assert SECRET_VALUE not in put.text + listed.text
    assert (
        await api.request("DELETE", "/services/web/secrets/API_KEY", json={})
    ).status_code == 200
    assert (await api.get("/services/web/secrets")).json() == []
    assert (
        await api.request("DELETE", "/services/web/secrets/API_KEY", json={})
    ).status_code == 404


@pytest.mark.parametrize("name", ["lower", "LD_PRELOAD", "BUILDQ_X", "NODE_OPTIONS", "1ABC"])
async def test_a_secret_a_build_may_not_receive_is_refused(
    api: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys, name: str
) -> None:
    await api.put("/services/web", json={"repo_url": REPO})

    response = await api.put(f"/services/web/secrets/{name}", json={"value": "v"})

    assert response.status_code == 422
    assert await redis.exists(keys.secrets("web")) == 0


async def test_secrets_of_an_unknown_service_are_404(api: httpx.AsyncClient) -> None:
    response = await api.put("/services/nope/secrets/API_KEY", json={"value": "v"})

    assert response.status_code == 404


async def test_without_a_key_nothing_secret_is_stored(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    settings = load_settings({})
    async with await client_for(redis, keys, settings) as api:
        await api.put("/services/web", json={"repo_url": REPO})
        secret = await api.put("/services/web/secrets/API_KEY", json={"value": SECRET_VALUE})
        hook = await api.put("/services/web", json={"repo_url": REPO, "webhook_secret": "x" * 20})

    assert secret.status_code == 409
    assert "BUILDQ_SECRETS_KEY" in secret.json()["error"]["message"]
    assert hook.status_code == 409
    assert await redis.exists(keys.secrets("web"), keys.hook_secret("web")) == 0


async def test_build_secrets_decrypts_for_the_deployer_only_with_the_same_key(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    settings = make_settings()
    await SecretStore(redis, keys, settings).put("web", "API_KEY", SECRET_VALUE)

    assert await build_secrets(redis, keys, settings, "web") == {"API_KEY": SECRET_VALUE}
    assert await build_secrets(redis, keys, settings, "other") == {}
    other_key = load_settings({}, secrets_key=Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match="another BUILDQ_SECRETS_KEY"):
        await build_secrets(redis, keys, other_key, "web")
    with pytest.raises(ConfigError, match="not set"):
        await build_secrets(redis, keys, load_settings({}), "web")


async def test_a_secret_value_with_nul_is_refused(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    with pytest.raises(ValidationError):
        await SecretStore(redis, keys, make_settings()).put("web", "API_KEY", "a\x00b")


def test_an_invalid_secrets_key_fails_at_start_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, secrets_key="not-a-fernet-key-but-secret")

    assert "not-a-fernet-key-but-secret" not in str(caught.value)
    assert "secrets_key" in str(caught.value).lower()


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        ("https://GitHub.com/acme/web.git", "github.com/acme/web"),
        ("https://github.com/acme/web", "github.com/acme/web"),
        ("https://github.com/acme/web/", "github.com/acme/web"),
        ("git@github.com:acme/web.git", "github.com/acme/web"),
        ("ssh://git@GITHUB.com:22/acme/web.git", "github.com/acme/web"),
        ("file:///srv/repos/web", "/srv/repos/web"),
        ("https://github.com/", None),
        ("mailto:x", None),
    ],
)
def test_repo_identity_ignores_host_case_scheme_and_dot_git(url: str, identity: str) -> None:
    assert repo_identity(url) == identity


async def test_services_are_found_by_any_form_of_their_repository_url(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    settings = make_settings()
    async with await client_for(redis, keys, settings) as api:
        await api.put("/services/web", json={"repo_url": REPO})
        await api.put("/services/docs", json={"repo_url": "https://github.com/acme/docs"})
    book = ServiceBook(redis, keys)

    found = await book.by_repository(["git@GITHUB.COM:acme/web", "https://x.org/y"])

    assert [r.name for r in found] == ["web"]


async def test_a_manual_lock_of_someone_else_refuses_a_rollback(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    settings = make_settings(
        api_tokens="alice:deployer=tok-alice,bob:deployer=tok-bob,root:admin=tok-root"
    )
    as_ = {n: {"Authorization": f"Bearer tok-{n}"} for n in ("alice", "bob", "root")}
    async with await client_for(redis, keys, settings) as client:
        assert (
            await client.put("/services/web", json={"repo_url": REPO}, headers=as_["bob"])
        ).is_success
        locked = await client.put(
            "/locks/web", json={"reason": "release freeze"}, headers=as_["bob"]
        )
        assert locked.status_code == 200, locked.text

        refused = await client.post("/services/web/rollback", headers=as_["alice"])
        by_owner = await client.post("/services/web/rollback", headers=as_["bob"])
        by_admin = await client.post("/services/web/rollback", headers=as_["root"])

    assert refused.status_code == 409
    assert "web is locked by bob (release freeze)" in refused.text
    # Past the lock check, both meet the rollback's own refusal: nothing was ever live.
    for answer in (by_owner, by_admin):
        assert answer.status_code == 409, answer.text
        assert "locked" not in answer.text
