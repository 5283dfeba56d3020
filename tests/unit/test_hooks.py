"""Git webhooks through the real app's middleware and routes on fakeredis: signatures,
repository matching, events, pinning and replay (no clone runs: ingest is off)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import httpx
import pytest

from shared.coord.services import ServiceRecord
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobRecord, JobStore
from shared.redis.keys import Keys
from tests.unit.test_services_api import KEY, client_for
from uploader.access import HOOK_PATHS, is_open
from uploader.forges import FORGES, HookEvent, Kind
from uploader.hooks import _target, preview_service

pytestmark = pytest.mark.anyio

SECRET = "hook-secret-0123456789"
SHA = "1" * 40
REPO = "https://github.com/acme/web.git"
TOKENS = "ada:admin=tok-admin"


@pytest.fixture
def hook_settings() -> Settings:
    # With API tokens: the hooks must get through without one.
    return load_settings({}, secrets_key=KEY, api_tokens=TOKENS)


@pytest.fixture
async def api(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, hook_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(redis, keys, hook_settings) as client:
        admin = {"Authorization": "Bearer tok-admin"}
        body = {
            "repo_url": REPO,
            "webhook_secret": SECRET,
            "preview_branches": ["feature/*"],
            "build": {"output": "dist"},
        }
        registered = await client.put("/services/web", json=body, headers=admin)
        assert registered.status_code == 201, registered.text
        yield client


def push(ref: str = "refs/heads/main", after: str = SHA, **repo: str) -> dict[str, Any]:
    repository = repo or {"clone_url": "https://GITHUB.com/acme/web", "html_url": REPO}
    return {"ref": ref, "after": after, "repository": repository}


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def github(
    api: httpx.AsyncClient,
    payload: dict[str, Any],
    *,
    event: str = "push",
    delivery: str = "d-1",
    signature: str | None = None,
) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature if signature is not None else signed(body),
    }
    return await api.post("/hooks/github", content=body, headers=headers)


Jobs = Callable[[], Awaitable[list[JobRecord]]]


@pytest.fixture
def jobs(redis: fakeredis.FakeAsyncRedis, keys: Keys, hook_settings: Settings) -> Jobs:
    """The jobs submitted so far, newest first."""

    async def recent() -> list[JobRecord]:
        return await JobStore(redis, keys, hook_settings).recent(limit=50)

    return recent


async def test_a_signed_push_to_production_pins_the_pushed_commit(
    api: httpx.AsyncClient, jobs: Jobs
) -> None:
    response = await github(api, push())

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    [job] = await jobs()
    assert (job.service, job.ref, job.repo_url) == ("web", SHA, REPO)
    assert job.build == {"output": "dist"}


async def test_a_replayed_delivery_acts_once(api: httpx.AsyncClient, jobs: Jobs) -> None:
    first = await github(api, push())
    again = await github(api, push())

    assert again.status_code == 202
    assert again.json()["status"] == "duplicate"
    assert again.json()["deployments"][0]["id"] == first.json()["deployments"][0]["id"]
    assert len(await jobs()) == 1


@pytest.mark.parametrize("signature", ["", "sha256=" + "0" * 64, signed(b"other body")])
async def test_a_forged_or_missing_signature_is_401_and_queues_nothing(
    api: httpx.AsyncClient,
    jobs: Jobs,
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    signature: str,
) -> None:
    response = await github(api, push(), signature=signature)

    assert response.status_code == 401
    assert await jobs() == []
    assert await redis.llen(keys.ingest) == 0


async def test_a_signature_with_another_secret_is_401(api: httpx.AsyncClient, jobs: Jobs) -> None:
    body = json.dumps(push()).encode()
    response = await github(api, push(), signature=signed(body, "another-secret-123456"))

    assert response.status_code == 401
    assert await jobs() == []


async def test_an_unknown_repository_is_404(api: httpx.AsyncClient) -> None:
    response = await github(api, push(clone_url="https://github.com/acme/other.git"))

    assert response.status_code == 404
    assert "no service" in response.json()["error"]["message"]


async def test_a_payload_without_a_repository_is_422(api: httpx.AsyncClient) -> None:
    response = await github(api, {"ref": "refs/heads/main"})

    assert response.status_code == 422


async def test_ping_answers_with_the_services(api: httpx.AsyncClient) -> None:
    response = await github(api, {"zen": "z", **push()}, event="ping")

    assert response.status_code == 200
    assert response.json() == {"status": "pong", "services": ["web"]}


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        ("issues", push(), "is not handled"),
        ("push", push(ref="refs/tags/v1"), "not a branch"),
        ("push", push(after="0" * 40), "deleted"),
        ("push", push(ref="refs/heads/wip"), "neither main nor a preview branch"),
    ],
)
async def test_what_is_not_acted_on_is_202_with_a_reason(
    api: httpx.AsyncClient,
    jobs: Jobs,
    event: str,
    payload: dict[str, Any],
    reason: str,
) -> None:
    response = await github(api, payload, event=event)

    assert response.status_code == 202
    assert reason in response.text
    assert await jobs() == []


async def test_a_push_to_a_preview_branch_deploys_a_stable_preview_service(
    api: httpx.AsyncClient, jobs: Jobs
) -> None:
    first = await github(api, push(ref="refs/heads/feature/Login"), delivery="a")
    second = await github(api, push(ref="refs/heads/feature/Login", after="2" * 40), delivery="b")

    names = [r.json()["deployments"][0]["service"] for r in (first, second)]
    assert names == ["web--feature-login", "web--feature-login"]
    assert {j.ref for j in await jobs()} == {SHA, "2" * 40}


def pull_request(action: str = "opened", head_repo: str = "acme/web") -> dict[str, Any]:
    return {
        "action": action,
        "number": 7,
        "pull_request": {
            "number": 7,
            "head": {"sha": SHA, "ref": "fix", "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "repo": {"full_name": "acme/web"}},
        },
        "repository": {"clone_url": REPO},
    }


async def test_a_pull_request_opens_a_preview_per_number(
    api: httpx.AsyncClient, jobs: Jobs
) -> None:
    response = await github(api, pull_request(), event="pull_request")

    assert response.status_code == 202, response.text
    [job] = await jobs()
    assert (job.service, job.ref) == ("web--pr-7", SHA)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(pull_request("closed"), "closed"), (pull_request(head_repo="evil/web"), "forks")],
)
async def test_closed_and_fork_pull_requests_build_nothing(
    api: httpx.AsyncClient,
    jobs: Jobs,
    payload: dict[str, Any],
    reason: str,
) -> None:
    response = await github(api, payload, event="pull_request")

    assert response.status_code == 202
    assert reason in response.text
    assert await jobs() == []


async def test_previews_build_with_the_parent_services_secrets(
    api: httpx.AsyncClient, jobs: Jobs
) -> None:
    pull = await github(api, pull_request(), event="pull_request")
    same = await github(api, push("refs/heads/feature/x"), delivery="d-2")

    assert (pull.status_code, same.status_code) == (202, 202)
    branch, preview = await jobs()
    assert (preview.service, preview.secrets_of) == ("web--pr-7", "web")
    assert (branch.service, branch.secrets_of) == ("web--feature-x", "web")


async def test_gitlab_checks_its_token_and_pins_the_commit(
    api: httpx.AsyncClient, jobs: Jobs
) -> None:
    payload = {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "checkout_sha": SHA,
        "project": {"git_http_url": REPO, "git_ssh_url": "git@github.com:acme/web.git"},
    }
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "u-1"}

    bad = await api.post("/hooks/gitlab", json=payload, headers={**headers, "X-Gitlab-Token": "x"})
    good = await api.post(
        "/hooks/gitlab", json=payload, headers={**headers, "X-Gitlab-Token": SECRET}
    )
    again = await api.post(
        "/hooks/gitlab", json=payload, headers={**headers, "X-Gitlab-Token": SECRET}
    )

    assert bad.status_code == 401
    assert good.status_code == 202, good.text
    assert again.json()["status"] == "duplicate"
    [job] = await jobs()
    assert job.ref == SHA


async def test_gitea_checks_its_hmac_header(api: httpx.AsyncClient, jobs: Jobs) -> None:
    body = json.dumps(push()).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Gitea-Event": "push"}

    forged = await api.post(
        "/hooks/gitea", content=body, headers={**headers, "X-Gitea-Signature": "0" * 64}
    )
    good = await api.post(
        "/hooks/gitea", content=body, headers={**headers, "X-Gitea-Signature": digest}
    )

    assert forged.status_code == 401
    assert good.status_code == 202, good.text
    assert [j.ref for j in await jobs()] == [SHA]


async def test_a_body_over_the_cap_is_refused_before_the_route(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    settings = load_settings({}, secrets_key=KEY, max_body_bytes=2048)
    async with await client_for(redis, keys, settings) as api:
        response = await github(api, {**push(), "pad": "x" * 4096})

    assert response.status_code == 413


def test_every_forge_path_is_exempt_from_bearer_tokens() -> None:
    assert {f"/hooks/{name}" for name in FORGES} == HOOK_PATHS
    assert all(is_open("POST", path) for path in HOOK_PATHS)
    assert not is_open("GET", "/hooks/github")


def test_preview_names_are_valid_and_stable_for_long_branches() -> None:
    branch = "feature/" + "very-long-branch-name-" * 5
    event = HookEvent(Kind.PUSH, branch=branch, commit=SHA)

    name = preview_service("web", event)

    assert name is not None
    assert len(name) <= 63
    assert name == preview_service("web", event)
    assert name != preview_service("web", HookEvent(Kind.PUSH, branch=branch + "2", commit=SHA))


@pytest.mark.parametrize("length", [20, 40, 50, 51])
def test_a_shortened_preview_name_keeps_its_whole_service_name_and_the_separator(
    length: int,
) -> None:
    service = ("s" * length)[:length]
    long_branch = HookEvent(Kind.PUSH, branch="feature/" + "x" * 80, commit=SHA)

    name = preview_service(service, long_branch)

    assert name is not None
    assert name.startswith(f"{service}--")
    assert len(name) <= 63


def test_a_service_name_too_long_for_a_shortened_preview_gets_none_but_short_labels_fit() -> None:
    service = "s" * 55

    assert preview_service(service, HookEvent(Kind.PUSH, branch="x" * 30, commit=SHA)) is None
    assert preview_service(service, HookEvent(Kind.PULL_REQUEST, number=7, commit=SHA)) == (
        f"{service}--pr-7"
    )


def test_a_preview_that_cannot_be_named_is_not_built_and_says_why() -> None:
    record = ServiceRecord(name="s" * 55, repo_url=REPO)
    event = HookEvent(Kind.PUSH, branch="feature/" + "x" * 30, commit=SHA)

    target, why = _target(record, event)

    assert target is None
    assert why.startswith("preview of branch feature/")
    assert "service name is too long for preview names" in why
    assert "at most 51 characters" in why
