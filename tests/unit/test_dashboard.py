"""The dashboard's HTML (uploader/dashview.py) and routes (uploader/dashboard.py):
hostile values are escaped everywhere, no inline script, a same-origin-only CSP."""

from __future__ import annotations

import re

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.coord.lockbook import LockBook
from shared.coord.staging import Staging
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobRecord, JobStore, Phase, Status
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader.app import create_app
from uploader.dashview import (
    CSP,
    Dashboard,
    Recent,
    Waiting,
    dashboard_page,
    deployment_page,
    esc,
    summary,
)
from uploader.state import Services

pytestmark = pytest.mark.anyio

XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
JOB = "b" * 20


def hostile_record() -> JobRecord:
    return JobRecord(
        id=JOB,
        status=Status.FAILED,
        service="web",
        repo_url=f"https://example.com/{XSS}",
        ref=XSS,
        commit=XSS,
        seq=1,
        created_at=1,
        updated_at=2,
        error=XSS,
        worker=XSS,
        phases={"building": Phase(start=1, end=2, duration_ms=1)},
    )


def assert_inert(markup: str) -> None:
    """No markup of the attacker's survives: only escaped text."""
    assert "<script>alert" not in markup
    assert "<img" not in markup
    assert "onerror=alert(2)>" not in markup.replace("&gt;", "")  # only as escaped text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    for tag in re.findall(r"<script[^>]*>", markup):
        assert 'src="/ui/static/' in tag, f"inline script: {tag}"
    assert " style=" not in markup
    assert "<style" not in markup


def test_esc_escapes_quotes_and_marks_nothing() -> None:
    assert esc('<a href="x">\'') == "&lt;a href=&quot;x&quot;&gt;&#x27;"
    assert esc(None) == "-"
    assert esc("") == "-"
    assert esc(0) == "0"


def test_dashboard_escapes_every_user_value() -> None:
    d = Dashboard(
        paused=True,
        counts={"build": 1},
        waiting=[Waiting(JOB, "build", 1, XSS, XSS)],
        workers=[{"id": XSS, "kind": XSS, "busy": 0, "slots": 1, "heartbeat_age_ms": 5}],
        active={XSS: [XSS]},
        recent=[Recent(hostile_record(), "http://web.localhost:8001/", "http://p/")],
        locks=[{"service": "web", "owner": XSS, "reason": XSS, "expires_at": 1}],
        claims=[{"env": "qa", "owner": XSS, "branch": XSS, "claimed_at": 1}],
        notes=[XSS],
    )

    markup = dashboard_page(d, events_after=XSS)

    assert_inert(markup)
    assert 'data-events-after="&quot;&gt;&lt;script&gt;' in markup
    assert "fleet paused" in markup


def test_deployment_page_escapes_and_offers_only_allowed_buttons() -> None:
    rec = hostile_record()
    info = summary(rec, {"position": None, "eta_s": None}, "http://s/", "http://p/")

    with_buttons = deployment_page(rec, info, may_cancel=False, may_retry=True)
    without = deployment_page(rec, info, may_cancel=False, may_retry=False)

    assert_inert(with_buttons)
    assert 'data-action="retry"' in with_buttons
    assert 'data-action="cancel"' not in with_buttons
    assert "data-action" not in without
    assert f'data-job="{JOB}"' in with_buttons


@pytest.fixture
async def app(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> tuple[FastAPI, Settings]:
    settings = load_settings({}, api_tokens="vera:viewer=tok-v,ada:admin=tok-a")
    api = create_app(settings, run_ingest=False).app
    store = JobStore(redis, keys, settings)
    api.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    await store.submit(JOB, service="web", repo_url=f"https://example.com/{XSS}")
    await LockBook(redis, keys, events_max=100).acquire_manual(
        "web", owner="ada", ttl_ms=60_000, reason=XSS
    )
    await Staging(redis, keys, events_max=100).claim("qa", owner="ada", branch="main")
    return api, settings


async def get(api: FastAPI, path: str, token: str | None = "tok-v") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        return await c.get(path, headers=headers)


async def test_dashboard_needs_a_token_and_shows_the_state_escaped(
    app: tuple[FastAPI, Settings],
) -> None:
    api, _ = app

    anonymous = await get(api, "/", token=None)
    page = await get(api, "/")

    assert anonymous.status_code == 401
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    body = page.text
    assert_inert(body)
    assert JOB in body  # the queued job, first in line
    assert "ada" in body
    assert "qa" in body
    assert re.search(r'data-events-after="\d+-\d+"', body)


async def test_deployment_page_buttons_follow_the_role(app: tuple[FastAPI, Settings]) -> None:
    api, _ = app

    as_viewer = await get(api, f"/ui/deployments/{JOB}")
    as_admin = await get(api, f"/ui/deployments/{JOB}", token="tok-a")
    missing = await get(api, "/ui/deployments/" + "c" * 20)

    assert as_viewer.status_code == as_admin.status_code == 200
    assert "data-action" not in as_viewer.text
    assert 'data-action="cancel"' in as_admin.text  # accepted: may still be cancelled
    assert 'data-action="retry"' not in as_admin.text
    assert missing.status_code == 404
    assert_inert(as_admin.text)


async def test_static_files_are_served_and_nothing_else(app: tuple[FastAPI, Settings]) -> None:
    api, _ = app

    script = await get(api, "/ui/static/dashboard.js")
    style = await get(api, "/ui/static/dashboard.css")
    other = await get(api, "/ui/static/..%2Fapp.py")

    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert other.status_code == 404


async def test_queued_job_json_carries_its_position(
    app: tuple[FastAPI, Settings], redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    api, _ = app
    await redis.hset(keys.job(JOB), "status", Status.QUEUED.value)
    await redis.lrem(keys.ingest, 0, JOB)
    await redis.lpush(keys.queue, JOB)
    await redis.lpush(keys.queue, "d" * 20)  # behind it

    record = (await get(api, f"/deployments/{JOB}")).json()
    queue = (await get(api, "/queue")).json()

    assert record["position"] == 1
    assert record["eta_s"] is None  # no build history, no deployer
    assert queue["positions"] == [
        {"id": JOB, "position": 1},
        {"id": "d" * 20, "position": 2},
    ]


async def test_a_workers_busy_count_is_what_its_active_list_holds_now(
    app: tuple[FastAPI, Settings], redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    # The heartbeat still says idle: the job was claimed after the last beat.
    await redis.zadd(keys.workers, {"deployer-1": 1})
    await redis.hset(keys.worker("deployer-1"), mapping={"kind": "deployer", "slots": 2, "busy": 0})
    await redis.lpush(keys.active("deployer-1"), JOB)

    body = (await get(api=app[0], path="/")).text

    row = re.search(r"<tr><td>deployer-1</td>.*?</tr>", body)
    assert row is not None
    assert "<td>1/2</td>" in row.group(0)
    assert f"/ui/deployments/{JOB}" in row.group(0)
