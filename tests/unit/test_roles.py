"""Every role against every API route: the documented answer, 401, or 403.

The table is keyed by the app's own OpenAPI operations: a route added without an
entry here fails :func:`test_every_api_operation_has_an_entry`. Each case runs on
a fresh fakeredis behind the real app's routes and security middleware (no S3:
``/readyz`` answers 503, which is not an authorization answer), with a job of
service ``web`` and a lock and claim held by ``web-dev`` so that cancel, retry,
unlock and release have something to act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import fakeredis
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from shared.coord.lockbook import LockBook
from shared.coord.staging import Staging
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader.app import create_app
from uploader.state import Services

pytestmark = pytest.mark.anyio

TOKENS = {
    "viewer": "vera:viewer=tok-viewer",
    "deployer-of-svc": "web-dev:deployer:web|web-*=tok-web",
    "deployer-of-other": "docs-dev:deployer:docs-*=tok-docs",
    "admin": "ada:admin=tok-admin",
}
ROLES = ("none", *TOKENS)


class Need(StrEnum):
    """Who may call a route (docs/SECURITY.md, "Roles")."""

    OPEN = "open"  # anyone, no token
    VIEWER = "viewer"  # any valid token
    SERVICE = "deployer of the service"  # deployer whose list covers it, or admin
    DEPLOYER = "deployer"  # any deployer, or admin
    ADMIN = "admin"
    OWN = "own signature"  # POST /chatops, /hooks/*: never a bearer token


@dataclass(frozen=True)
class Case:
    need: Need
    path: str  # with parameters filled in
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None


JOB = "a" * 20
ORIGIN = "http://127.0.0.1:8000"
TABLE: dict[tuple[str, str], Case] = {
    ("POST", "/deployments"): Case(
        Need.SERVICE, "/deployments", {"repo_url": "https://github.com/t/web.git"}
    ),
    ("GET", "/deployments"): Case(Need.VIEWER, "/deployments"),
    ("GET", "/deployments/{job_id}"): Case(Need.VIEWER, f"/deployments/{JOB}"),
    ("GET", "/deployments/{job_id}/logs"): Case(Need.VIEWER, f"/deployments/{JOB}/logs"),
    ("POST", "/deployments/{job_id}/cancel"): Case(Need.SERVICE, f"/deployments/{JOB}/cancel", {}),
    ("POST", "/deployments/{job_id}/retry"): Case(Need.SERVICE, f"/deployments/{JOB}/retry", {}),
    ("GET", "/queue"): Case(Need.VIEWER, "/queue"),
    ("GET", "/events"): Case(Need.VIEWER, "/events"),  # 503 here: no stream reader
    ("GET", "/healthz"): Case(Need.OPEN, "/healthz"),
    ("GET", "/readyz"): Case(Need.OPEN, "/readyz"),
    ("GET", "/fleet"): Case(Need.VIEWER, "/fleet"),
    ("PUT", "/fleet"): Case(Need.ADMIN, "/fleet", {"paused": False}),
    ("GET", "/metrics"): Case(Need.VIEWER, "/metrics"),
    ("GET", "/locks"): Case(Need.VIEWER, "/locks"),
    ("GET", "/locks/{service}"): Case(Need.VIEWER, "/locks/web"),
    ("PUT", "/locks/{service}"): Case(Need.SERVICE, "/locks/web-api", {"reason": "r"}),
    ("DELETE", "/locks/{service}"): Case(Need.SERVICE, "/locks/web-api", {}),  # 404: free
    ("GET", "/staging"): Case(Need.VIEWER, "/staging"),
    ("PUT", "/staging/{env}"): Case(Need.DEPLOYER, "/staging/qa", {"branch": "main"}),
    ("DELETE", "/staging/{env}"): Case(Need.DEPLOYER, "/staging/free", {}),  # 404: free
    ("POST", "/chatops"): Case(Need.OWN, "/chatops"),
    ("GET", "/services"): Case(Need.VIEWER, "/services"),
    ("GET", "/services/{name}"): Case(Need.VIEWER, "/services/web"),  # 404: not registered
    ("PUT", "/services/{name}"): Case(
        Need.SERVICE, "/services/web", {"repo_url": "https://github.com/t/web.git"}
    ),
    ("DELETE", "/services/{name}"): Case(Need.ADMIN, "/services/web", {}),  # 404 for admins
    ("GET", "/services/{name}/secrets"): Case(Need.SERVICE, "/services/web/secrets"),
    # 404 for those allowed: web is neither registered nor live here
    ("POST", "/services/{name}/rollback"): Case(Need.SERVICE, "/services/web/rollback", {}),
    ("PUT", "/services/{name}/secrets/{key}"): Case(
        Need.SERVICE, "/services/web/secrets/API_KEY", {"value": "v"}
    ),
    ("DELETE", "/services/{name}/secrets/{key}"): Case(
        Need.SERVICE, "/services/web/secrets/API_KEY", {}
    ),
    ("POST", "/hooks/github"): Case(Need.OWN, "/hooks/github", {}),
    ("POST", "/hooks/gitlab"): Case(Need.OWN, "/hooks/gitlab", {}),
    ("POST", "/hooks/gitea"): Case(Need.OWN, "/hooks/gitea", {}),
    ("GET", "/sites/{service}/{path}"): Case(Need.OPEN, "/sites/web/index.html"),
    ("GET", "/preview/{job_id}/{path}"): Case(Need.OPEN, f"/preview/{JOB}/index.html"),
}
# Outside the OpenAPI schema, listed so their openness is a decision, not an accident.
EXTRA: dict[tuple[str, str], Case] = {
    ("GET", "/"): Case(Need.VIEWER, "/"),  # the dashboard: a read like any other
    ("GET", "/ui/panels"): Case(Need.VIEWER, "/ui/panels"),
    ("GET", "/ui/deployments/{job_id}"): Case(Need.VIEWER, f"/ui/deployments/{JOB}"),
    ("GET", "/ui/deployments/{job_id}/summary"): Case(
        Need.VIEWER, f"/ui/deployments/{JOB}/summary"
    ),
    # The dashboard's own script and stylesheet: the login page needs the stylesheet.
    ("GET", "/ui/static/{name}"): Case(Need.OPEN, "/ui/static/dashboard.js"),
    # The login form and its posts (a browser's, with its Origin): open by nature; the
    # post checks the token itself (415 here: not a form body), logout ends a session.
    ("GET", "/login"): Case(Need.OPEN, "/login"),
    ("POST", "/login"): Case(Need.OPEN, "/login", {}, headers={"Origin": ORIGIN}),
    ("POST", "/logout"): Case(Need.OPEN, "/logout", {}, headers={"Origin": ORIGIN}),
    ("GET", "/docs"): Case(Need.OPEN, "/docs"),
    ("GET", "/openapi.json"): Case(Need.OPEN, "/openapi.json"),
}
# force=true: releasing someone else's lock or claim is for admins only.
FORCED: dict[tuple[str, str], Case] = {
    ("DELETE", "/locks/{service}"): Case(Need.ADMIN, "/locks/web", {}, {"force": "true"}),
    ("DELETE", "/staging/{env}"): Case(Need.ADMIN, "/staging/qa", {}, {"force": "true"}),
}


def expected(need: Need, role: str) -> str:
    """``ok`` (any answer but 401/403), ``401`` or ``403``."""
    if need is Need.OPEN:
        return "ok"
    if need is Need.OWN:
        return "401"  # unsigned: a bearer token is not a chat signature
    if role == "none":
        return "401"
    allowed = {
        Need.VIEWER: set(TOKENS),
        Need.SERVICE: {"deployer-of-svc", "admin"},
        Need.DEPLOYER: {"deployer-of-svc", "deployer-of-other", "admin"},
        Need.ADMIN: {"admin"},
    }[need]
    return "ok" if role in allowed else "403"


def outcome(status: int) -> str:
    return str(status) if status in (401, 403) else "ok"


@pytest.fixture
def role_settings() -> Settings:
    return load_settings({}, api_tokens=",".join(TOKENS.values()))


@pytest.fixture
async def app(redis: fakeredis.FakeAsyncRedis, keys: Keys, role_settings: Settings) -> FastAPI:
    api = create_app(role_settings, run_ingest=False).app  # the real routes and middleware
    store = JobStore(redis, keys, role_settings)
    api.state.services = Services(role_settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    await store.submit(JOB, service="web", repo_url="https://github.com/t/web.git")
    await LockBook(redis, keys, events_max=100).acquire_manual(
        "web", owner="web-dev", ttl_ms=60_000
    )
    await Staging(redis, keys, events_max=100).claim("qa", owner="web-dev")
    return api


def headers_for(role: str) -> dict[str, str]:
    if role == "none":
        return {}
    token = TOKENS[role].rsplit("=", 1)[1]
    return {"Authorization": f"Bearer {token}"}


async def call(app: FastAPI, method: str, case: Case, role: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        return await c.request(
            method,
            case.path,
            json=case.json,
            params=case.params,
            headers=headers_for(role) | (case.headers or {}),
        )


def test_every_api_operation_has_an_entry(role_settings: Settings) -> None:
    api = create_app(role_settings, run_ingest=False).app
    operations = {
        (method.upper(), path)
        for path, item in api.openapi()["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }
    missing = sorted(operations - set(TABLE))
    stale = sorted(set(TABLE) - operations)
    assert not missing, f"add these routes to TABLE (and docs/SECURITY.md): {missing}"
    assert not stale, f"these TABLE entries name no route: {stale}"


def test_every_route_outside_the_schema_has_an_entry(role_settings: Settings) -> None:
    api = create_app(role_settings, run_ingest=False).app
    hidden = {
        (method, route.path)
        for route in api.routes
        if isinstance(route, APIRoute) and not route.include_in_schema
        for method in route.methods - {"HEAD"}
    }
    missing = sorted(hidden - set(EXTRA))
    assert not missing, f"add these routes to EXTRA (and docs/SECURITY.md): {missing}"


CASES = [
    pytest.param(method, case, role, id=f"{method} {path} [{role}]{suffix}")
    for table, suffix in ((TABLE, ""), (EXTRA, ""), (FORCED, " force"))
    for (method, path), case in table.items()
    for role in ROLES
]


@pytest.mark.parametrize(("method", "case", "role"), CASES)
async def test_role_gets_the_documented_answer(
    app: FastAPI, method: str, case: Case, role: str
) -> None:
    response = await call(app, method, case, role)

    assert outcome(response.status_code) == expected(case.need, role), (
        f"{method} {case.path} as {role}: {response.status_code} {response.text[:300]}"
    )
    assert response.status_code != 500, response.text
