"""One submit path (``uploader/submit.py``): ``POST /deployments`` and the chat
``deploy`` command apply the same checks, share one rate budget per identity, and
write the same record. The real routers and security on fakeredis, with the store's
clock (which also places the rate-limit window) under the test's control."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from tests.unit.conftest import FakeClock, WriteOnlyBucket
from uploader import api, chatops, team_api
from uploader.auth import Identity, Role
from uploader.chatops import chatops_clock, slack_signature
from uploader.errors import install_error_handlers
from uploader.security import install_security
from uploader.state import Services
from uploader.submit import Forbidden, RateLimited, Submission, submit

pytestmark = pytest.mark.anyio

SECRET = "submit-test-signing-secret"
REPO = "https://github.com/team/web.git"
ROOT = {"Authorization": "Bearer tok-root"}
DANA = {"Authorization": "Bearer tok-dana"}
# Fields the store sets per job: they differ between any two jobs.
PER_JOB = {
    "id",
    "seq",
    "created_at",
    "updated_at",
    "p:accepted:start",
    "qscore",
}  # qscore: its turn
TRIGGERS = itertools.count()


@pytest.fixture
def limited() -> Settings:
    return load_settings(
        {},
        slack_signing_secret=SECRET,
        api_tokens="root:admin=tok-root,dana:deployer:docs-*=tok-dana",
        chat_users="T1:U-root=root,T1:U-dana=dana",
        api_url="http://buildq.test",
        repo_host_denylist="*.evil.example",
        submit_rate_per_min=2,
    )


@pytest.fixture
def services(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, limited: Settings, clock: FakeClock
) -> Services:
    store = JobStore(redis, keys, limited, clock=clock)
    return Services(limited, keys, redis, WriteOnlyBucket(), store)  # type: ignore[arg-type]


@pytest.fixture
async def client(services: Services, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, services.settings)
    app.include_router(api.router)
    app.include_router(team_api.router)
    app.include_router(chatops.router)
    app.state.services = services
    app.dependency_overrides[chatops_clock] = lambda: clock
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://buildq.test") as c:
        yield c


async def chat(
    client: httpx.AsyncClient, clock: FakeClock, text: str, user: str = "root"
) -> dict[str, str]:
    """A signed Slack ``/buildq <text>`` from ``U-<user>``; the reply's JSON."""
    body = urlencode(
        {
            "team_id": "T1",
            "channel_id": "C1",
            "user_id": f"U-{user}",
            "user_name": user,
            "command": "/buildq",
            "text": text,
            "trigger_id": f"trig-{next(TRIGGERS)}",  # each a new invocation
        }
    ).encode()
    timestamp = str(int(clock.now_s))
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": slack_signature(SECRET.encode(), timestamp, body),
    }
    response = await client.post("/chatops", content=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, str] = response.json()
    return answer


def job_of(answer: dict[str, str]) -> str:
    return answer["text"].split("job ")[1].split()[0]


async def counters(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> list[str]:
    return [k async for k in redis.scan_iter(match=f"{keys.prefix}:ratelimit:*")]


async def test_chat_deploys_are_rate_limited_like_the_api_from_one_budget(
    client: httpx.AsyncClient, clock: FakeClock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first = await client.post("/deployments", json={"repo_url": REPO}, headers=ROOT)
    second = await chat(client, clock, f"deploy {REPO}")
    by_chat = await chat(client, clock, f"deploy {REPO}")
    by_api = await client.post("/deployments", json={"repo_url": REPO}, headers=ROOT)

    assert first.status_code == 202, first.text
    assert second["response_type"] == "in_channel", second
    assert by_chat["response_type"] == "ephemeral"
    assert by_chat["text"].startswith("more than 2 deploys per minute for root; retry in ")
    assert by_api.status_code == 429
    assert by_api.json()["error"] == {
        "code": "rate_limited",
        "message": "more than 2 submissions per minute for root; retry later",
    }
    assert 1 <= int(by_api.headers["retry-after"]) <= 60
    assert await redis.zcard(keys.jobs) == 2

    clock.advance(60)  # the next window: a new budget
    assert (await chat(client, clock, f"deploy {REPO}"))["response_type"] == "in_channel"


async def test_chat_and_api_write_the_same_record(
    client: httpx.AsyncClient, clock: FakeClock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    by_api = await client.post(
        "/deployments", json={"repo_url": REPO, "service": "site"}, headers=ROOT
    )
    by_chat = job_of(await chat(client, clock, f"deploy <{REPO}|web> site"))

    from_api = await redis.hgetall(keys.job(by_api.json()["id"]))
    from_chat = await redis.hgetall(keys.job(by_chat))
    assert set(from_api) == set(from_chat)
    assert {k: v for k, v in from_api.items() if k not in PER_JOB} == {
        k: v for k, v in from_chat.items() if k not in PER_JOB
    }
    assert (from_chat["service"], from_chat["repo_url"]) == ("site", REPO)
    assert (from_api["seq"], from_chat["seq"]) == ("1", "2")
    assert await redis.lrange(keys.ingest, 0, -1) == [by_chat, by_api.json()["id"]]


# who, repo_url, service, API status, the message both surfaces give
REFUSALS = [
    ("root", "https://git.evil.example/a/b", None, 422, "denied by the operator"),
    ("root", "https://10.0.0.1/a/b", None, 422, "non-global address"),
    ("root", REPO, "Bad_Name", 422, "invalid service name"),
    ("dana", REPO, None, 403, "dana may deploy only docs-*, not web"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c[4] for c in REFUSALS])
async def test_both_surfaces_refuse_alike_and_spend_no_budget(
    client: httpx.AsyncClient,
    clock: FakeClock,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    case: tuple[str, str, str | None, int, str],
) -> None:
    who, url, service, status, message = case
    body = {"repo_url": url} if service is None else {"repo_url": url, "service": service}
    response = await client.post("/deployments", json=body, headers=ROOT if who == "root" else DANA)
    answer = await chat(client, clock, f"deploy {url} {service or ''}".rstrip(), user=who)

    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert answer["response_type"] == "ephemeral"
    assert message in answer["text"]
    assert await redis.zcard(keys.jobs) == 0
    assert await counters(redis, keys) == []


async def test_submit_checks_the_service_before_the_budget(services: Services) -> None:
    dana = Identity("dana", Role.DEPLOYER, ("docs-*",))
    for _ in range(3):
        with pytest.raises(Forbidden, match="dana may deploy only docs-"):
            await submit(services, dana, Submission(REPO))
    for _ in range(2):
        await submit(services, dana, Submission(REPO, service="docs-web"))
    with pytest.raises(RateLimited) as limited:
        await submit(services, dana, Submission(REPO, service="docs-web"))

    assert (limited.value.name, limited.value.limit) == ("dana", 2)
    assert 1 <= limited.value.retry_after_s <= 60


async def test_submit_normalises_the_optional_fields(services: Services) -> None:
    admin = Identity("root", Role.ADMIN)
    receipt = await submit(
        services,
        admin,
        Submission(REPO, ref="main", root_dir="./site/", build={"output": "dist/"}),
    )
    record = await services.store.get(receipt.job_id)

    assert record is not None
    assert (receipt.service, receipt.seq, receipt.created) == ("web", 1, True)
    assert (record.ref, record.root_dir) == ("main", "site")


async def test_an_accepted_job_is_copied_to_storage_once_with_its_seq(
    services: Services, clock: FakeClock
) -> None:
    admin = Identity("root", Role.ADMIN)
    first = await submit(services, admin, Submission(REPO, build={"command": "make"}))
    again = await submit(services, admin, Submission(REPO), idempotency_key="k")
    clock.advance(60)  # a new rate-limit window
    repeat = await submit(services, admin, Submission(REPO), idempotency_key="k")

    saved = services.storage.saved  # type: ignore[attr-defined]
    assert set(saved) == {
        f"accepted/web/{first.seq}-{first.job_id}.json",
        f"accepted/web/{again.seq}-{again.job_id}.json",
    }
    assert repeat.job_id == again.job_id
    copy = saved[f"accepted/web/{first.seq}-{first.job_id}.json"]
    assert (copy["status"], copy["seq"]) == ("accepted", first.seq)
    assert copy["build"] == {"command": "***"}  # the private override never leaves Redis
