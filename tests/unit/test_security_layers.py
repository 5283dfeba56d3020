"""How the security layers fit together (``uploader/security.py``): the guard parses a
JSON body once and routes validate that document; the identity dependency guards
every route added after it is installed; the access decision on its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import pytest
from fastapi import APIRouter, FastAPI

from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import api, control_api, team_api
from uploader.access import Gatekeeper
from uploader.auth import Identity, Role
from uploader.errors import install_error_handlers
from uploader.refused import Refused
from uploader.security import install_security
from uploader.state import Services

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer tok-ada"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def secured() -> Settings:
    return load_settings({}, api_tokens="ada:admin=tok-ada,vera:viewer=tok-vera")


def make_app(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings, *routers: APIRouter
) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, settings)
    for router in routers:
        app.include_router(router)
    store = JobStore(redis, keys, settings)
    app.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    return app


@pytest.fixture
async def client(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, secured: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(redis, keys, secured, api.router, control_api.router, team_api.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1:8000", headers=ADMIN
    ) as c:
        yield c


async def test_routes_validate_the_guards_document_without_parsing_again(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    real_loads = json.loads

    def counting_loads(text: Any, **kw: Any) -> Any:
        parsed.append(text if isinstance(text, str) else text.decode())
        return real_loads(text, **kw)

    monkeypatch.setattr(json, "loads", counting_loads)  # the guard's and Starlette's
    bodies = {
        ("POST", "/deployments"): '{"repo_url": "https://github.com/t/web.git"}',
        ("PUT", "/locks/web"): '{"reason": "release"}',
        ("PUT", "/fleet"): '{"paused": true}',
    }
    codes = [
        (await client.request(method, path, content=body, headers=JSON)).status_code
        for (method, path), body in bodies.items()
    ]

    assert codes == [202, 200, 200]
    assert [parsed.count(body) for body in bodies.values()] == [1, 1, 1]


async def test_a_route_added_after_install_is_guarded(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, secured: Settings
) -> None:
    extra = APIRouter()

    @extra.get("/extra")
    async def extra_route() -> dict[str, str]:
        return {"ok": "yes"}

    app = make_app(redis, keys, secured, extra)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        anonymous = await c.get("/extra")
        admin = await c.get("/extra", headers=ADMIN)

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert admin.json() == {"ok": "yes"}


async def test_an_anonymous_caller_is_refused_before_routing_or_reading_a_body(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, secured: Settings
) -> None:
    # 401 for a path that does not exist and for an oversized body: an anonymous
    # caller learns nothing about routes and cannot make the server read a body.
    app = make_app(redis, keys, secured, api.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        unknown = await c.get("/no-such-path")
        huge = await c.post("/deployments", content=b"{" + b" " * (2 << 20) + b"}", headers=JSON)

    assert unknown.status_code == 401
    assert huge.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "authorization", "expected"),
    [
        ("GET", "/healthz", None, None),
        ("GET", "/healthz", b"Bearer wrong", None),  # open: a bad token is no refusal
        ("GET", "/sites/web/a.txt", None, None),
        ("POST", "/chatops", b"Bearer tok-ada", None),  # never a bearer identity
        ("GET", "/queue", b"Bearer tok-vera", Identity("vera", Role.VIEWER)),
        ("GET", "/queue", b"bearer tok-ada", Identity("ada", Role.ADMIN)),
        ("POST", "/healthz", None, 401),  # open for reads only
        ("GET", "/queue", b"Bearer tok-ada ", Identity("ada", Role.ADMIN)),
        ("GET", "/queue", b"Token tok-ada", 401),
        ("PUT", "/fleet", b"Bearer tok-vera", 403),
    ],
)
def test_the_access_decision(
    secured: Settings,
    method: str,
    path: str,
    authorization: bytes | None,
    expected: Identity | int | None,
) -> None:
    gate = Gatekeeper(secured)
    if isinstance(expected, int):
        with pytest.raises(Refused) as refused:
            gate.identify(method, path, authorization)
        assert refused.value.status == expected
    else:
        assert gate.identify(method, path, authorization) == expected


def test_local_mode_is_the_local_admin_everywhere(settings: Settings) -> None:
    gate = Gatekeeper(settings)

    assert gate.local_mode
    for method, path in (("GET", "/queue"), ("POST", "/deployments"), ("POST", "/chatops")):
        identity = gate.identify(method, path, None)
        assert identity is not None
        assert identity.role is Role.ADMIN
