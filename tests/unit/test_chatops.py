"""POST /chatops on fakeredis: signature checks, commands, answers, duplicate deliveries."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import anyio
import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import WriteOnlyBucket
from uploader import chatops, team_api
from uploader.chatops import chatops_clock, slack_signature, verify_slack
from uploader.errors import install_error_handlers
from uploader.security import install_security
from uploader.state import Services

pytestmark = pytest.mark.anyio

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
MM_TOKEN = "mattermost-command-token"


class Clock:
    """The route's wall clock, movable by the test."""

    def __init__(self) -> None:
        self.now_s = time.time()

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def chat_settings() -> Settings:
    return load_settings(
        {},
        slack_signing_secret=SECRET,
        mattermost_token=MM_TOKEN,
        api_tokens="root:admin=tok-root,ops-lead:admin=tok-ops,dana:deployer:docs-*=tok-dana",
        chat_users="T1:U-alice=alice,T1:U-bob=bob,T1:U-root=root,T1:U-dana=dana,T2:U-x=x",
        api_url="http://buildq.test",
        repo_host_denylist="*.evil.example",
    )


@pytest.fixture
def wall() -> Clock:
    return Clock()


@pytest.fixture
def app(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, chat_settings: Settings, wall: Clock
) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, chat_settings)
    app.include_router(team_api.router)
    app.include_router(chatops.router)
    store = JobStore(redis, keys, chat_settings)
    app.state.services = Services(chat_settings, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]
    app.dependency_overrides[chatops_clock] = lambda: wall
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    root = {"Authorization": "Bearer tok-root"}  # the HTTP API's reads need a token
    async with httpx.AsyncClient(
        transport=transport, base_url="http://buildq.test", headers=root
    ) as client:
        yield client


def form(text: str, user: str = "alice", trigger: str | None = None, **extra: str) -> bytes:
    fields = {
        "token": "legacy-verification-token",
        "team_id": "T1",
        "channel_id": "C1",
        "user_id": f"U-{user}",
        "user_name": user,
        "command": "/buildq",
        "text": text,
        "trigger_id": trigger if trigger is not None else f"trig-{time.monotonic_ns()}",
        **extra,
    }
    return urlencode(fields).encode()


def signed(body: bytes, at_s: float, secret: str = SECRET) -> dict[str, str]:
    timestamp = str(int(at_s))
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": slack_signature(secret.encode(), timestamp, body),
    }


async def slack(
    client: httpx.AsyncClient, wall: Clock, text: str, user: str = "alice", **kw: Any
) -> httpx.Response:
    body = form(text, user, **kw)
    return await client.post("/chatops", content=body, headers=signed(body, wall.now_s))


async def changes(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> list[dict[str, str]]:
    return [e for _, e in await redis.xrange(keys.events)]


def test_verify_slack_matches_slacks_documented_example() -> None:
    # The example request from Slack's "Verifying requests from Slack" documentation.
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    secret = b"8f742231b10e8888abcd99yyyzzz85a5"

    assert verify_slack(secret, "1531420618", signature, body, now_s=1531420618 + 10)
    assert not verify_slack(secret, "1531420618", signature, body + b"x", now_s=1531420628)
    assert not verify_slack(secret, "1531420618", signature, body, now_s=1531420618 + 301)


async def test_signed_lock_command_locks_and_answers_in_channel(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    response = await slack(client, wall, "lock web hotfix in progress")

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["response_type"] == "in_channel"
    assert answer["text"].startswith("alice locked web until ")
    assert answer["text"].endswith(": hotfix in progress")
    locks = (await client.get("/locks")).json()
    assert [(x["service"], x["owner"], x["user_id"], x["reason"]) for x in locks] == [
        ("web", "alice", "U-alice", "hotfix in progress")
    ]


def h(timestamp: str | None, signature: str | None) -> dict[str, str]:
    """Slack headers, each left out when None; ``{name}`` fields are filled in later."""
    out = {"x-slack-request-timestamp": timestamp, "x-slack-signature": signature}
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(h(None, None), id="unsigned"),
        pytest.param(h("{now}", None), id="no-signature"),
        pytest.param(h(None, "{good}"), id="no-timestamp"),
        pytest.param(h("{now}", "{forged}"), id="forged"),
        pytest.param(h("{stale}", "{stale_sig}"), id="stale"),
        pytest.param(h("{future}", "{future_sig}"), id="future"),
        pytest.param(h("{now}", "v1={hex}"), id="v1"),
        pytest.param(h("{now}", "v0=" + "0" * 5000), id="5000-digits"),
        pytest.param(h("{now}", "V0={hex}"), id="upper-v"),
        pytest.param(h("{now}", "{good_upper}"), id="upper-hex"),
        pytest.param(h("1" * 5000, "{good}"), id="ts-5000-digits"),
        pytest.param(h("-5", "{good}"), id="ts-negative"),
        pytest.param(h("1e9", "{good}"), id="ts-exponent"),
        pytest.param(h(" {now}", "{good}"), id="ts-space"),
    ],
)
async def test_unverifiable_slack_requests_get_401_and_change_nothing(
    client: httpx.AsyncClient,
    wall: Clock,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    headers: dict[str, str],
) -> None:
    body = form("lock web")
    now = str(int(wall.now_s))
    stale, future = str(int(wall.now_s) - 301), str(int(wall.now_s) + 301)
    good = slack_signature(SECRET.encode(), now, body)
    values = {
        "now": now,
        "good": good,
        "good_upper": "v0=" + good[3:].upper(),
        "hex": good[3:],
        "forged": slack_signature(b"not-the-secret", now, body),
        "stale": stale,
        "stale_sig": slack_signature(SECRET.encode(), stale, body),
        "future": future,
        "future_sig": slack_signature(SECRET.encode(), future, body),
    }
    sent = {k: v.format(**values) for k, v in headers.items()}
    sent["content-type"] = "application/x-www-form-urlencoded"

    response = await client.post("/chatops", content=body, headers=sent)

    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    "header",
    [b"v0=\xff\xfe" + b"a" * 60, b"v0=" + "é".encode("latin-1") * 64, b"\x80"],
)
async def test_non_ascii_signatures_get_401_never_500(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, header: bytes
) -> None:
    body = form("lock web")
    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"x-slack-request-timestamp", str(int(wall.now_s)).encode()),
        (b"x-slack-signature", header),
    ]

    response = await client.post("/chatops", content=body, headers=headers)

    assert response.status_code == 401
    assert await redis.dbsize() == 0


async def test_a_body_changed_after_signing_gets_401(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis
) -> None:
    body = form("lock web")
    headers = signed(body, wall.now_s)

    response = await client.post("/chatops", content=body.replace(b"web", b"api"), headers=headers)

    assert response.status_code == 401
    assert await redis.dbsize() == 0


async def test_a_replay_after_five_minutes_gets_401_and_changes_nothing(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    body = form("claim staging main")
    headers = signed(body, wall.now_s)
    first = await client.post("/chatops", content=body, headers=headers)
    assert first.json()["response_type"] == "in_channel"
    await client.delete("/staging/staging", params={"force": "true"})
    before = await changes(redis, keys)

    wall.now_s += 301
    replay = await client.post("/chatops", content=body, headers=headers)

    assert replay.status_code == 401
    assert await changes(redis, keys) == before
    assert (await client.get("/staging")).json() == []


async def test_a_duplicate_delivery_is_executed_once_and_gets_the_same_answer(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    body = form("deploy https://github.com/team/site.git", trigger="T-42")
    headers = signed(body, wall.now_s)

    first = await client.post("/chatops", content=body, headers=headers)
    wall.now_s += 30  # Slack retries, or a second replica gets the same request
    second = await client.post(
        "/chatops", content=body, headers={**headers, "x-slack-retry-num": "1"}
    )

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert "is deploying https://github.com/team/site.git as site: job " in first.json()["text"]
    assert await redis.zcard(keys.jobs) == 1


async def test_concurrent_duplicate_deliveries_execute_once(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    body = form("lock web", trigger="T-7")
    headers = signed(body, wall.now_s)
    answers: list[dict[str, str]] = []

    async def deliver() -> None:
        answers.append((await client.post("/chatops", content=body, headers=headers)).json())

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(deliver)

    locked = [e for e in await changes(redis, keys) if e.get("action") == "locked"]
    assert len(locked) == 1
    assert sum(a["response_type"] == "in_channel" for a in answers) >= 1
    assert all(
        a["response_type"] == "in_channel" or "already being handled" in a["text"] for a in answers
    )


async def test_the_same_command_with_a_new_trigger_runs_again(
    client: httpx.AsyncClient, wall: Clock
) -> None:
    await slack(client, wall, "lock web", trigger="T-1")
    await slack(client, wall, "unlock web", trigger="T-2")
    again = await slack(client, wall, "lock web", trigger="T-3")

    assert again.json()["response_type"] == "in_channel"
    assert len((await client.get("/locks")).json()) == 1


async def test_mattermost_token_is_checked_in_constant_time_and_required(
    client: httpx.AsyncClient, redis: fakeredis.FakeAsyncRedis
) -> None:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    wrong = form("lock web", token="nope")
    missing = form("lock web", token="")
    unicode = form("lock web", token="ü" * 10)
    for body in (wrong, missing, unicode):
        assert (await client.post("/chatops", content=body, headers=headers)).status_code == 401
    assert await redis.dbsize() == 0

    ok = await client.post("/chatops", content=form("lock web", token=MM_TOKEN), headers=headers)
    assert ok.status_code == 200
    assert ok.json()["response_type"] == "in_channel"


async def test_only_the_owner_unlocks_and_admins_may_force(
    client: httpx.AsyncClient, wall: Clock
) -> None:
    await slack(client, wall, "lock web", user="alice")

    refused = await slack(client, wall, "unlock web", user="bob")
    not_admin = await slack(client, wall, "unlock web force", user="bob")
    forced = await slack(client, wall, "unlock web force", user="root")

    assert refused.json()["response_type"] == "ephemeral"
    assert "locked by alice" in refused.json()["text"]
    assert "needs the admin role" in not_admin.json()["text"]
    assert forced.json() == {
        "response_type": "in_channel",
        "text": "root unlocked web (forced; it was alice's)",
    }
    assert (await client.get("/locks")).json() == []


async def test_lock_held_by_someone_else_is_refused_ephemerally(
    client: httpx.AsyncClient, wall: Clock
) -> None:
    await slack(client, wall, "lock web freeze", user="alice")

    answer = (await slack(client, wall, "lock web", user="bob")).json()

    assert answer["response_type"] == "ephemeral"
    assert answer["text"].startswith("web is locked by alice (freeze) since ")


async def test_claim_release_and_claims(client: httpx.AsyncClient, wall: Clock) -> None:
    claimed = (await slack(client, wall, "claim staging feature/login")).json()
    taken = (await slack(client, wall, "claim staging", user="bob")).json()
    listed = (await slack(client, wall, "claims", user="bob")).json()
    bob_release = (await slack(client, wall, "release staging", user="bob")).json()
    released = (await slack(client, wall, "release staging")).json()

    assert claimed == {
        "response_type": "in_channel",
        "text": "alice claimed staging for feature/login",
    }
    assert taken["response_type"] == "ephemeral"
    assert "claimed by alice for feature/login" in taken["text"]
    assert listed["text"].startswith("staging is claimed by alice for feature/login")
    assert bob_release["response_type"] == "ephemeral"
    assert released == {"response_type": "in_channel", "text": "alice released staging"}


async def test_status_queue_and_help_answer_ephemerally(
    client: httpx.AsyncClient, wall: Clock
) -> None:
    await slack(client, wall, "lock web reason here")

    status = (await slack(client, wall, "status")).json()
    one = (await slack(client, wall, "status web")).json()
    queue = (await slack(client, wall, "queue")).json()
    usage = (await slack(client, wall, "help")).json()
    empty = (await slack(client, wall, "")).json()

    assert status["response_type"] == one["response_type"] == "ephemeral"
    assert "web is locked by alice (reason here)" in status["text"]
    assert one["text"].startswith("web is locked by alice")
    assert queue["text"].startswith("queue 0, cloning 0, delayed 0, dead 0; 0 workers")
    assert "lock <service> [reason]" in usage["text"]
    assert "released after 1 h" in usage["text"]
    assert empty == usage


async def test_deploy_submits_a_job_and_names_it(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    answer = (await slack(client, wall, "deploy <https://github.com/Team/My_Site.git> web")).json()

    assert answer["response_type"] == "in_channel"
    job_id = answer["text"].split("job ")[1].split()[0]
    assert answer["text"].endswith(f"http://buildq.test/deployments/{job_id}")
    record = await redis.hgetall(keys.job(job_id))
    assert (record["service"], record["repo_url"]) == ("web", "https://github.com/Team/My_Site.git")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lock Web", "invalid service name"),
        ("lock", "usage: lock"),
        ("claim ../etc", "invalid environment name"),
        ("deploy file:///etc", "local repositories are not allowed"),
        ("deploy ext::sh -c id", "remote-helper"),
        ("deploy https://git.evil.example/x/y.git", "denied by the operator"),
        ("frobnicate", "unknown command 'frobnicate'"),
    ],
)
async def test_bad_commands_answer_ephemerally_and_change_nothing(
    client: httpx.AsyncClient,
    wall: Clock,
    redis: fakeredis.FakeAsyncRedis,
    text: str,
    expected: str,
) -> None:
    answer = (await slack(client, wall, text)).json()

    assert answer["response_type"] == "ephemeral"
    assert expected in answer["text"]
    assert await redis.keys("*:events") == []
    assert await redis.keys("*:job:*") == []


async def test_the_display_name_is_never_the_identity(
    client: httpx.AsyncClient, wall: Clock
) -> None:
    # bob renames his handle to "root": the user id still maps to bob, a deployer.
    renamed = (await slack(client, wall, "lock web", user="bob", user_name="root")).json()
    forced = (await slack(client, wall, "unlock web force", user="bob", user_name="root")).json()

    assert renamed["text"].startswith("bob locked web")
    assert "bob (deployer) may not force" in forced["text"]
    assert [x["owner"] for x in (await client.get("/locks")).json()] == ["bob"]


async def test_unmapped_users_may_read_and_nothing_else(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await slack(client, wall, "lock web freeze", user="alice")
    reads = [
        (await slack(client, wall, text, user="mallory")).json()
        for text in ("status", "queue", "locks", "claims", "help")
    ]
    writes = [
        (await slack(client, wall, text, user="mallory")).json()
        for text in (
            "lock api",
            "unlock web force",
            "claim staging",
            "release staging force",
            "deploy https://github.com/team/site.git",
        )
    ]

    assert all(r["response_type"] == "ephemeral" for r in reads)
    assert "web is locked by alice (freeze)" in reads[2]["text"]
    assert all("not mapped to a buildq identity" in w["text"] for w in writes), writes
    assert [x["owner"] for x in (await client.get("/locks")).json()] == ["alice"]
    assert await redis.zcard(keys.jobs) == 0


async def test_a_workspace_not_in_chat_users_is_refused(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis
) -> None:
    # Signed with the same app secret, but from another workspace.
    response = await slack(client, wall, "status", user="alice", team_id="T-other")

    assert response.status_code == 403
    assert "workspace is not configured" in response.json()["error"]["message"]
    assert await redis.keys("*:idem:*") == []


async def test_a_mapped_user_takes_its_role_and_services_from_its_token_entry(
    client: httpx.AsyncClient, wall: Clock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    docs = (await slack(client, wall, "lock docs-site", user="dana")).json()
    web = (await slack(client, wall, "lock web", user="dana")).json()
    deploy_web = await slack(client, wall, "deploy https://github.com/team/web.git", user="dana")
    root_force = (await slack(client, wall, "unlock docs-site force", user="root")).json()

    assert docs["text"].startswith("dana locked docs-site")
    assert "dana may lock only docs-*, not web" in web["text"]
    assert "dana may deploy only docs-*, not web" in deploy_web.json()["text"]
    assert root_force["text"] == "root unlocked docs-site (forced; it was dana's)"
    assert await redis.zcard(keys.jobs) == 0


async def test_chat_deploys_are_rate_limited_per_identity(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, chat_settings: Settings, wall: Clock
) -> None:
    limited = chat_settings.model_copy(update={"submit_rate_per_min": 2})
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, limited)
    app.include_router(team_api.router)
    app.include_router(chatops.router)
    app.state.services = Services(
        limited, keys, redis, WriteOnlyBucket(), JobStore(redis, keys, limited)
    )  # type: ignore[arg-type]
    app.dependency_overrides[chatops_clock] = lambda: wall
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://buildq.test") as client:
        answers = [
            (await slack(client, wall, f"deploy https://github.com/team/s{i}.git")).json()
            for i in range(3)
        ]
        bob = (await slack(client, wall, "deploy https://github.com/team/b.git", user="bob")).json()

    assert [a["response_type"] for a in answers] == ["in_channel", "in_channel", "ephemeral"]
    assert "more than 2 deploys per minute for alice" in answers[2]["text"]
    assert bob["response_type"] == "in_channel"
    assert await redis.zcard(keys.jobs) == 3


async def test_oversized_bodies_are_refused(client: httpx.AsyncClient, wall: Clock) -> None:
    body = form("lock web " + "x" * 20_000)

    response = await client.post("/chatops", content=body, headers=signed(body, wall.now_s))

    assert response.status_code == 413
