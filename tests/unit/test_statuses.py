"""uploader/statuses.py and the forges' status repositories: request shapes per forge,
one post per state across uploaders, retries only where they can help, and settings
that cannot send a token anywhere odd."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import httpx
import pytest

from shared.core.errors import ConfigError
from shared.core.settings import load_settings
from uploader import statuses
from uploader.forges import FORGES
from uploader.statuses import StatusReporter, StatusTarget

pytestmark = pytest.mark.anyio

SHA = "a" * 40


def reporter(
    redis: fakeredis.FakeAsyncRedis, answers: list[int], seen: list[httpx.Request], **env: str
) -> StatusReporter:
    settings = load_settings(
        {
            "BUILDQ_STATUS_TOKENS": "github=gh-tok,gitlab=gl-tok,gitea=ge-tok",
            "BUILDQ_STATUS_API_URLS": "github=https://api.gh.test,gitlab=https://gl.test/api/v4,"
            "gitea=https://ge.test/api/v1",
            **env,
        }
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers.pop(0) if answers else 201)

    made = StatusReporter(settings).bind(redis)
    made.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return made


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statuses, "RETRY_S", 0.0)


@pytest.mark.parametrize(
    ("forge", "url", "auth", "state"),
    [
        (
            "github",
            f"https://api.gh.test/repos/acme/web/statuses/{SHA}",
            "Bearer gh-tok",
            "failure",
        ),
        (
            "gitea",
            f"https://ge.test/api/v1/repos/acme/web/statuses/{SHA}",
            "token ge-tok",
            "failure",
        ),
        ("gitlab", f"https://gl.test/api/v4/projects/42/statuses/{SHA}", None, "failed"),
    ],
)
async def test_each_forge_gets_its_own_request_shape(
    redis: fakeredis.FakeAsyncRedis, forge: str, url: str, auth: str | None, state: str
) -> None:
    seen: list[httpx.Request] = []
    repo = "42" if forge == "gitlab" else "acme/web"

    posted = await reporter(redis, [], seen).report(
        "job1", StatusTarget(forge, repo, SHA, "web"), "failure", "failed", "https://x/"
    )

    assert posted
    (request,) = seen
    assert str(request.url) == url
    assert request.headers.get("authorization") == auth
    if forge == "gitlab":
        assert request.headers["private-token"] == "gl-tok"
    body: dict[str, Any] = json.loads(request.content)
    assert body["state"] == state
    assert body["target_url"] == "https://x/"


async def test_one_post_per_state_however_many_uploaders_see_it(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    seen: list[httpx.Request] = []
    target = StatusTarget("github", "acme/web", SHA, "web")
    first, second = reporter(redis, [], seen), reporter(redis, [], seen)

    results = [
        await first.report("job1", target, "success", "live", "u"),
        await second.report("job1", target, "success", "live", "u"),
        await second.report("job1", target, "pending", "queued", "u"),
    ]

    assert results == [True, False, True]
    assert len(seen) == 2


async def test_server_errors_are_retried_and_refusals_are_not(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    seen: list[httpx.Request] = []
    target = StatusTarget("github", "acme/web", SHA, "web")

    assert await reporter(redis, [502, 503], seen).report("j1", target, "success", "d", "u")
    assert len(seen) == 3
    seen.clear()
    assert not await reporter(redis, [401], seen).report("j2", target, "success", "d", "u")
    assert len(seen) == 1


async def test_a_forge_without_a_token_gets_nothing(redis: fakeredis.FakeAsyncRedis) -> None:
    seen: list[httpx.Request] = []
    made = reporter(redis, [], seen, BUILDQ_STATUS_TOKENS="github=gh-tok")

    target = StatusTarget("gitea", "acme/web", SHA, "web")
    assert not await made.report("job1", target, "success", "live", "u")
    assert seen == []


@pytest.mark.parametrize(
    "env",
    [
        {"BUILDQ_STATUS_TOKENS": "bitbucket=tok"},
        {"BUILDQ_STATUS_TOKENS": "github"},
        {"BUILDQ_STATUS_API_URLS": "github=file:///etc/passwd"},
    ],
)
def test_odd_status_settings_stop_the_process(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        StatusReporter(load_settings(env))


@pytest.mark.parametrize(
    ("forge", "document", "expected"),
    [
        ("github", {"repository": {"full_name": "acme/web"}}, "acme/web"),
        ("gitea", {"repository": {"full_name": "acme/web.site"}}, "acme/web.site"),
        ("gitlab", {"project": {"id": 42}}, "42"),
        ("github", {"repository": {"full_name": "../../admin"}}, None),
        ("github", {"repository": {"full_name": "acme/web/../x"}}, None),
        ("gitlab", {"project": {"id": True}}, None),
        ("github", {}, None),
    ],
)
def test_the_status_repository_is_read_and_checked(
    forge: str, document: dict[str, Any], expected: str | None
) -> None:
    assert FORGES[forge].status_repo(document) == expected
