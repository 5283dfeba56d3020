"""uploader/login.py and uploader/session.py: the dashboard's login, its session cookie,
the redirect to the login page and cross-site writes made with the cookie. Each test
runs the real app's routes and middleware on fakeredis."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import login
from uploader.access import safe_next
from uploader.app import create_app
from uploader.auth import Authenticator, Identity, Role, parse_tokens
from uploader.session import SESSION_COOKIE, SESSION_TTL_S, SessionStore
from uploader.state import Services

pytestmark = pytest.mark.anyio

TOKENS = "vera:viewer=tok-viewer-0123456789,ada:admin=tok-admin-0123456789"
ADMIN_TOKEN = "tok-admin-0123456789"
VIEWER_TOKEN = "tok-viewer-0123456789"
API = "http://127.0.0.1:8000"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SAME_ORIGIN = {"Origin": API}


def make_app(redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings) -> FastAPI:
    app = create_app(settings, run_ingest=False).app
    store = JobStore(redis, keys, settings)
    app.state.services = Services(settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    return app


@pytest.fixture
def token_settings() -> Settings:
    return load_settings({}, api_tokens=TOKENS)


@pytest.fixture
async def client(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, token_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(redis, keys, token_settings))
    async with httpx.AsyncClient(transport=transport, base_url=API) as c:
        yield c


async def log_in(
    client: httpx.AsyncClient, token: str, next_path: str = "/", **headers: str
) -> httpx.Response:
    return await client.post(
        "/login",
        data={"token": token, "next": next_path},
        headers={**SAME_ORIGIN, **headers},
    )


def session_of(response: httpx.Response) -> str:
    found = re.match(rf"{SESSION_COOKIE}=([^;]*);", response.headers["set-cookie"])
    assert found, response.headers.get("set-cookie")
    return found[1]


async def test_a_browser_without_a_session_is_sent_to_the_login_page_and_api_clients_get_401(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/", headers=HTML)
    deeper = await client.get("/ui/deployments/" + "a" * 20, headers=HTML)
    api = await client.get("/")
    queue = await client.get("/queue", headers=HTML)  # the API is not a page
    events = await client.get("/events", headers={"Accept": "text/event-stream"})

    assert (page.status_code, page.headers["location"]) == (303, "/login")
    assert deeper.status_code == 303
    assert deeper.headers["location"] == f"/login?next=/ui/deployments/{'a' * 20}"
    assert api.status_code == 401
    assert api.json()["error"]["code"] == "unauthorized"
    assert queue.status_code == 401
    assert events.status_code == 401


async def test_the_login_page_is_a_form_that_posts_to_itself_under_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/login", params={"next": "/ui/deployments/x"}, headers=HTML)
    css = await client.get("/ui/static/dashboard.css")

    assert page.status_code == 200
    assert '<form method="post" action="/login"' in page.text
    assert 'name="token" type="password"' in page.text
    assert 'name="next" value="/ui/deployments/x"' in page.text
    assert "<script" not in page.text
    assert "form-action 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # Under no-referrer a browser's form post says ``Origin: null``, which is refused.
    assert page.headers["referrer-policy"] == "same-origin"
    assert css.status_code == 200  # the login page's stylesheet needs no session


async def test_a_valid_token_opens_a_session_in_an_httponly_strict_cookie_never_the_token(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    response = await log_in(client, ADMIN_TOKEN, "/ui/deployments/abc")

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/deployments/abc"
    cookie = response.headers["set-cookie"]
    session_id = session_of(response)
    assert ADMIN_TOKEN not in cookie
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    stored = await redis.keys(f"{keys.prefix}:session:*")
    assert stored == [keys.session(hashlib.sha256(session_id.encode()).hexdigest())]
    assert session_id not in stored[0]  # Redis keeps only the cookie's digest
    value = await redis.get(stored[0])
    assert ADMIN_TOKEN not in value
    assert '"name": "ada"' in value
    assert 0 < await redis.ttl(stored[0]) <= SESSION_TTL_S


async def test_the_session_cookie_carries_the_role_of_its_token(
    client: httpx.AsyncClient,
) -> None:
    admin = session_of(await log_in(client, ADMIN_TOKEN))
    viewer = session_of(await log_in(client, VIEWER_TOKEN))

    client.cookies.set(SESSION_COOKIE, viewer)
    page = await client.get("/", headers=HTML)
    queue = await client.get("/queue")
    refused = await client.put("/fleet", json={"paused": True}, headers=SAME_ORIGIN)
    client.cookies.set(SESSION_COOKIE, admin)
    paused = await client.put("/fleet", json={"paused": True}, headers=SAME_ORIGIN)
    login_page = await client.get("/login")

    assert page.status_code == 200
    assert 'id="panels"' in page.text
    assert queue.status_code == 200
    assert refused.status_code == 403
    assert "vera is a viewer" in refused.json()["error"]["message"]
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    assert "Logged in as <b>ada</b> (admin)" in login_page.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),  # another site
        ({"Origin": "http://web.localhost:8001"}, 403),  # a published site
        ({"Origin": "null"}, 403),
        ({}, 403),  # no Origin at all: not a same-origin browser request
        ({"Origin": API, "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": API, "Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": API, "Sec-Fetch-Site": "same-origin"}, 200),
    ],
)
async def test_a_change_made_with_the_cookie_must_come_from_the_api_origin(
    client: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    client.cookies.set(SESSION_COOKIE, session_of(await log_in(client, ADMIN_TOKEN)))

    response = await client.put("/fleet", json={"paused": True}, headers=headers)

    assert response.status_code == status, response.text
    if status == 403:
        fleet = await client.get("/fleet")
        assert fleet.json()["paused"] is False  # refused, and nothing changed


async def test_a_cross_site_form_post_with_the_cookie_is_refused(
    client: httpx.AsyncClient,
) -> None:
    client.cookies.set(SESSION_COOKIE, session_of(await log_in(client, ADMIN_TOKEN)))

    # What a foreign page's <form> sends (were the SameSite cookie sent at all).
    foreign = await client.post(
        "/deployments/" + "a" * 20 + "/cancel",
        content=b"x=1",
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    # The same body from our own origin is still not JSON.
    own = await client.post(
        "/deployments/" + "a" * 20 + "/cancel",
        content=b"x=1",
        headers={**SAME_ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
    )

    assert foreign.status_code == 403
    assert own.status_code == 415


async def test_a_wrong_token_gets_the_form_again_with_401_no_cookie_and_no_trace_of_it(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = await log_in(client, "tok-admin-012345678X")
    empty = await log_in(client, "")
    long = await log_in(client, ADMIN_TOKEN + "x" * 2000)

    for response in (wrong, empty, long):
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert "That token is not valid." in response.text
    assert "tok-admin-012345678X" not in wrong.text
    out = capsys.readouterr()
    assert "tok-admin" not in out.out + out.err


async def test_login_attempts_are_limited_per_client_even_with_the_right_token(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(login, "clock", lambda: 1_700_000_010.0)  # one window throughout
    for _ in range(login.ATTEMPTS_PER_WINDOW):
        assert (await log_in(client, "wrong-token-value")).status_code == 401

    limited = await log_in(client, ADMIN_TOKEN)

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "30"  # windows start on whole minutes
    assert "set-cookie" not in limited.headers
    assert "Too many attempts" in limited.text


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/ui/../../etc",
        "/ui//evil.example",
        "javascript:alert(1)",
        "/queue",  # the API is not a page to go back to
        "",
    ],
)
async def test_login_never_redirects_off_the_dashboard(
    client: httpx.AsyncClient, target: str
) -> None:
    response = await log_in(client, ADMIN_TOKEN, target)

    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_next_keeps_only_the_dashboards_own_pages() -> None:
    assert safe_next("/") == "/"
    assert (
        safe_next("/ui/deployments/00000000000000000abc") == "/ui/deployments/00000000000000000abc"
    )
    assert safe_next(None) == "/"
    assert safe_next("/ui/deployments/a?x=//evil") == "/"


async def test_login_posts_need_the_browsers_same_origin_header(
    client: httpx.AsyncClient,
) -> None:
    bare = await client.post("/login", data={"token": ADMIN_TOKEN})
    foreign = await client.post(
        "/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "https://evil.example"}
    )
    as_json = await client.post("/login", json={"token": ADMIN_TOKEN}, headers=SAME_ORIGIN)

    assert bare.status_code == 403
    assert foreign.status_code == 403
    assert as_json.status_code == 415
    for response in (bare, foreign, as_json):
        assert "set-cookie" not in response.headers


async def test_logout_ends_the_session_for_every_replica_and_clears_the_cookie(
    client: httpx.AsyncClient,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    token_settings: Settings,
) -> None:
    session_id = session_of(await log_in(client, VIEWER_TOKEN))
    client.cookies.set(SESSION_COOKIE, session_id)
    assert (await client.get("/queue")).status_code == 200
    # A second uploader replica sharing the Redis.
    replica = httpx.ASGITransport(app=make_app(redis, keys, token_settings))
    async with httpx.AsyncClient(transport=replica, base_url=API) as other:
        other.cookies.set(SESSION_COOKIE, session_id)
        assert (await other.get("/queue")).status_code == 200

        out = await client.post("/logout", headers=SAME_ORIGIN)  # a viewer may log out

        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert await redis.keys(f"{keys.prefix}:session:*") == []
        assert (await other.get("/queue")).status_code == 401
        assert (await other.get("/", headers=HTML)).status_code == 303


async def test_the_cookie_is_secure_when_the_api_is_served_over_https(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    public = load_settings({}, api_tokens=TOKENS, api_url="https://buildq.example.net")
    local = load_settings({}, api_tokens=TOKENS)
    for settings, base in ((public, "https://buildq.example.net"), (local, "https://127.0.0.1")):
        transport = httpx.ASGITransport(app=make_app(redis, keys, settings))
        async with httpx.AsyncClient(transport=transport, base_url=base) as c:
            response = await c.post("/login", data={"token": ADMIN_TOKEN}, headers={"Origin": base})
        assert response.status_code == 303, response.text
        assert "; Secure" in response.headers["set-cookie"]


async def test_a_session_ends_when_its_token_is_rotated_or_removed(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    before = Authenticator(parse_tokens(TOKENS))
    session_id = await SessionStore(redis, keys, before).create(Identity("ada", Role.ADMIN))
    rotated = Authenticator(parse_tokens("ada:admin=a-new-token-9876543210"))
    removed = Authenticator(parse_tokens("vera:viewer=tok-viewer-0123456789"))
    demoted = Authenticator(parse_tokens("ada:viewer=tok-admin-0123456789"))

    assert await SessionStore(redis, keys, before).identity(session_id) == Identity(
        "ada", Role.ADMIN
    )
    assert await SessionStore(redis, keys, rotated).identity(session_id) is None
    assert await SessionStore(redis, keys, removed).identity(session_id) is None
    # Same token, new role: the session follows the configuration, not its start.
    assert await SessionStore(redis, keys, demoted).identity(session_id) == Identity(
        "ada", Role.VIEWER
    )
    assert await SessionStore(redis, keys, before).identity("x" * 43) is None


async def test_a_malformed_or_forged_cookie_is_no_session(client: httpx.AsyncClient) -> None:
    for value in ("", "abc", ADMIN_TOKEN, "A" * 43, "../" * 20):
        client.cookies.set(SESSION_COOKIE, value)
        assert (await client.get("/queue")).status_code == 401


async def test_local_mode_needs_no_login(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings
) -> None:
    transport = httpx.ASGITransport(app=make_app(redis, keys, settings))
    async with httpx.AsyncClient(transport=transport, base_url=API) as c:
        page = await c.get("/", headers=HTML)
        form = await c.get("/login")
        post = await c.post("/login", data={"token": "x"}, headers=SAME_ORIGIN)

    assert page.status_code == 200
    assert (form.status_code, form.headers["location"]) == (303, "/")
    assert (post.status_code, post.headers["location"]) == (303, "/")
    assert "set-cookie" not in post.headers
