"""deployer/staleness.py: the claim-time check on fakeredis with Lua (``stale.lua``
over the submissions ``submit.lua`` records), and the runner ending a stale job
before it fetches anything."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import fakeredis
import pytest
from cryptography.fernet import Fernet

from deployer.pipeline import JobRunner
from deployer.staleness import (
    Facts,
    Live,
    Newer,
    Staleness,
    StaleVerdict,
    decide,
    digest,
    ended_fields,
)
from shared.cli.progress import outcome
from shared.coord.secrets import SecretStore
from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.redis.keys import Keys
from shared.storage.s3 import S3Storage, make_s3_client
from tests.unit.test_pipeline import WORKER, Env, ingested, repository, run, submit

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

REPO = "https://h/org/web"
SHA = "a" * 40
OTHER_SHA = "b" * 40


async def job(
    store: JobStore,
    job_id: str,
    *,
    service: str = "web",
    status: Status = Status.QUEUED,
    ref: str | None = None,
    commit: str | None = None,
    build: dict[str, str] | None = None,
) -> JobRecord:
    """A submitted job moved to ``status`` (ended ones with their end fields)."""
    await store.submit(job_id, service=service, repo_url=REPO, ref=ref, build=build)
    fields = {"commit": commit} if commit else {}
    await store.transition(job_id, status, **fields)
    record = await store.get(job_id)
    assert record is not None
    return record


async def make_live(redis: fakeredis.FakeAsyncRedis, keys: Keys, record: JobRecord) -> None:
    """What promote.lua leaves for ``record``: the service's alias points at it."""
    await redis.hset(
        keys.site(record.service), mapping={"id": record.id, "seq": record.seq, "fence": ""}
    )


@pytest.fixture
def staleness(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, settings: Settings
) -> Staleness:
    return Staleness(redis, keys, settings, store)


# --- the pure decision ------------------------------------------------------------


def record(**kw: object) -> JobRecord:
    base: dict[str, object] = {
        "id": "j5",
        "status": "building",
        "service": "web",
        "repo_url": REPO,
        "seq": 5,
        "created_at": 1,
        "updated_at": 1,
    }
    return JobRecord.model_validate({**base, **kw})


def test_a_newer_unfinished_submission_supersedes_before_anything_else() -> None:
    live = Live("j3", 3, SHA, REPO, "", "d")
    facts = Facts(Newer("j7", 7, "queued"), live)

    decision = decide(record(ref=SHA, commit=SHA), "d", facts)

    assert decision.verdict is StaleVerdict.SUPERSEDED
    assert decision.by == "j7"
    assert "submission 7 (j7) is newer and queued" in decision.reason


def test_the_newest_of_the_newer_unfinished_and_the_live_submission_is_named() -> None:
    facts = Facts(Newer("j7", 7, "queued"), Live("j8", 8, SHA, REPO, "", "d"))

    decision = decide(record(), "d", facts)

    assert (decision.verdict, decision.by) == (StaleVerdict.SUPERSEDED, "j8")


def test_a_pinned_commit_that_is_live_with_the_same_settings_is_served() -> None:
    facts = Facts(None, Live("j3", 3, SHA, REPO, "", "d"))

    decision = decide(record(ref=SHA, commit=SHA), "d", facts)

    assert decision.verdict is StaleVerdict.SERVED
    assert decision.by == "j3"


@pytest.mark.parametrize(
    ("changes", "settings_digest"),
    [
        ({"ref": "main"}, "d"),  # a branch: redeploying it may be on purpose
        ({"ref": OTHER_SHA, "commit": OTHER_SHA}, "d"),  # another commit
        ({"root_dir": "site"}, "d"),  # another directory of the repository
        ({"repo_url": "https://h/org/fork"}, "d"),  # another repository
        ({}, "e"),  # another build override or other secrets
        ({}, ""),  # settings unknown (the override expired)
    ],
)
def test_anything_short_of_the_same_commit_and_settings_is_built(
    changes: dict[str, str], settings_digest: str
) -> None:
    facts = Facts(None, Live("j3", 3, SHA, REPO, "", "d"))

    decision = decide(record(**{"ref": SHA, "commit": SHA, **changes}), settings_digest, facts)

    assert decision.verdict is StaleVerdict.BUILD


def test_a_newer_live_deployment_of_another_commit_supersedes() -> None:
    facts = Facts(None, Live("j9", 9, OTHER_SHA, REPO, "", "d"))

    decision = decide(record(ref="main", commit=SHA), "d", facts)

    assert (decision.verdict, decision.by) == (StaleVerdict.SUPERSEDED, "j9")


def test_the_live_job_itself_rerun_is_built_and_promoted_idempotently() -> None:
    facts = Facts(None, Live("j5", 5, SHA, REPO, "", "d"))

    assert decide(record(ref=SHA, commit=SHA), "d", facts).verdict is StaleVerdict.BUILD


def test_a_job_superseded_at_its_take_records_no_building_phase() -> None:
    rec = record(phases={"building": {"start": 1234}})
    decision = decide(rec, "d", Facts(Newer("j7", 7, "queued"), None))

    assert ended_fields(rec, decision, at_take=True) == {
        "superseded_by": "j7",
        "-p:building:start": "",  # deleted by the ending transition (_transition.lua)
        "-p:building:end": "",
    }
    assert ended_fields(rec, decision, at_take=False) == {"superseded_by": "j7"}


def test_the_settings_digest_covers_the_override_and_each_secrets_update() -> None:
    base = digest({"command": "make"}, [("TOKEN", 1)])

    assert digest({"command": "make"}, [("TOKEN", 1)]) == base
    assert digest({"command": "make x"}, [("TOKEN", 1)]) != base
    assert digest({"command": "make"}, [("TOKEN", 2)]) != base
    assert digest({"command": "make"}, []) != base
    assert digest(None, [("TOKEN", 1)]) != base


# --- the facts, read by stale.lua ------------------------------------------------


async def test_a_newer_queued_submission_supersedes_an_older_taken_one(
    staleness: Staleness, store: JobStore
) -> None:
    older = await job(store, "j1", status=Status.BUILDING)
    await job(store, "j2")

    decision = await staleness.check(older)

    assert (decision.verdict, decision.by) == (StaleVerdict.SUPERSEDED, "j2")


async def test_the_newest_unfinished_submission_is_named(
    staleness: Staleness, store: JobStore
) -> None:
    older = await job(store, "j1", status=Status.BUILDING)
    await job(store, "j2", status=Status.WAITING)
    await job(store, "j3", status=Status.ACCEPTED)  # still being cloned: not ended
    await job(store, "j4", status=Status.FAILED)

    decision = await staleness.check(older)

    assert (decision.verdict, decision.by) == (StaleVerdict.SUPERSEDED, "j3")


async def test_newer_submissions_that_failed_or_were_cancelled_do_not_supersede(
    staleness: Staleness, store: JobStore
) -> None:
    older = await job(store, "j1", status=Status.BUILDING)
    await job(store, "j2", status=Status.FAILED)
    await job(store, "j3", status=Status.CANCELLED)

    assert (await staleness.check(older)).verdict is StaleVerdict.BUILD


async def test_older_submissions_never_supersede_a_newer_one(
    staleness: Staleness, store: JobStore
) -> None:
    await job(store, "j1")
    newer = await job(store, "j2", status=Status.BUILDING)

    assert (await staleness.check(newer)).verdict is StaleVerdict.BUILD


async def test_a_newer_live_deployment_supersedes(
    staleness: Staleness, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    older = await job(store, "j1", status=Status.BUILDING, ref="main", commit=SHA)
    newer = await job(store, "j2", status=Status.LIVE, commit=OTHER_SHA)
    await make_live(redis, keys, newer)

    decision = await staleness.check(older)

    assert (decision.verdict, decision.by) == (StaleVerdict.SUPERSEDED, "j2")
    assert "is newer and live" in decision.reason


async def test_a_newer_live_job_is_named_over_an_older_unfinished_one(
    staleness: Staleness, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    older = await job(store, "j1", status=Status.BUILDING)
    await job(store, "j2", status=Status.QUEUED)
    newest = await job(store, "j3", status=Status.LIVE)
    await make_live(redis, keys, newest)

    decision = await staleness.check(older)

    assert (decision.verdict, decision.by) == (StaleVerdict.SUPERSEDED, "j3")


async def test_a_preview_never_supersedes_production_nor_another_branch(
    staleness: Staleness, store: JobStore
) -> None:
    production = await job(store, "j1", status=Status.BUILDING)
    feature = await job(store, "j2", service="web--feature", status=Status.BUILDING)
    await job(store, "j3", service="web--feature")
    await job(store, "j4", service="web--other")

    assert (await staleness.check(production)).verdict is StaleVerdict.BUILD
    same_branch = await staleness.check(feature)
    assert (same_branch.verdict, same_branch.by) == (StaleVerdict.SUPERSEDED, "j3")


async def test_a_pinned_commit_already_live_is_served_by_the_live_deployment(
    staleness: Staleness, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first = await job(store, "j1", status=Status.BUILDING, ref="main", commit=SHA)
    assert (await staleness.check(first)).verdict is StaleVerdict.BUILD  # records settings
    await store.transition("j1", Status.LIVE)
    await make_live(redis, keys, first)
    again = await job(store, "j2", status=Status.BUILDING, ref=SHA, commit=SHA)

    decision = await staleness.check(again)

    assert (decision.verdict, decision.by) == (StaleVerdict.SERVED, "j1")


async def test_a_secret_changed_since_the_live_build_means_building_again(
    staleness: Staleness, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    key = Fernet.generate_key().decode()
    secrets = SecretStore(redis, keys, load_settings({"BUILDQ_SECRETS_KEY": key}))
    await secrets.put("web", "TOKEN", "one")
    first = await job(store, "j1", status=Status.BUILDING, ref=SHA, commit=SHA)
    await staleness.check(first)
    await store.transition("j1", Status.LIVE)
    await make_live(redis, keys, first)
    await redis.hset(keys.secrets("web"), "TOKEN", '{"token": "x", "updated_at": 99}')
    again = await job(store, "j2", status=Status.BUILDING, ref=SHA, commit=SHA)

    assert (await staleness.check(again)).verdict is StaleVerdict.BUILD


async def test_a_different_build_override_means_building_again(
    staleness: Staleness, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first = await job(
        store, "j1", status=Status.BUILDING, ref=SHA, commit=SHA, build={"command": "make"}
    )
    await staleness.check(first)
    await store.transition("j1", Status.LIVE)
    await make_live(redis, keys, first)
    same = await job(
        store, "j2", status=Status.BUILDING, ref=SHA, commit=SHA, build={"command": "make"}
    )
    other = await job(
        store, "j3", status=Status.BUILDING, ref=SHA, commit=SHA, build={"command": "make x"}
    )

    assert (await staleness.check(other)).verdict is StaleVerdict.BUILD
    await store.transition("j3", Status.FAILED)  # else j3 is newer and unfinished for j2
    assert (await staleness.check(same)).verdict is StaleVerdict.SERVED


async def test_expired_submissions_are_dropped_as_they_are_met(
    staleness: Staleness, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    older = await job(store, "j1", status=Status.BUILDING)
    await job(store, "j2", status=Status.FAILED)
    await redis.delete(keys.job("j2"))  # its record expired

    assert (await staleness.check(older)).verdict is StaleVerdict.BUILD
    assert await redis.zrange(keys.submissions("web"), 0, -1) == ["j1"]


async def test_submit_records_each_submission_by_seq(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await job(store, "j1")
    await job(store, "j2")
    await job(store, "p1", service="web--feature")

    assert await redis.zrange(keys.submissions("web"), 0, -1, withscores=True) == [
        ("j1", 1.0),
        ("j2", 2.0),
    ]
    assert await redis.zrange(keys.submissions("web--feature"), 0, -1) == ["p1"]


# --- the runner -------------------------------------------------------------------


@pytest.fixture
async def env(aws: None, redis: fakeredis.FakeAsyncRedis, clock: FakeClock, tmp_path: Path) -> Env:
    """A deployer's runner as tests/unit/test_pipeline.py builds it."""
    settings = load_settings(
        {
            "BUILDQ_BUILD_SANDBOX": "process",
            "BUILDQ_LOCK_WAIT_S": "0",
            "BUILDQ_S3_BUCKET": "unit-stale",
        }
    )
    storage = S3Storage(make_s3_client(settings), settings.s3_bucket, concurrency=4)
    await storage.ensure_bucket()
    store = JobStore(redis, Keys("unit"), settings, clock=clock)
    runner = JobRunner(
        settings=settings,
        keys=store.keys,
        redis=redis,
        store=store,
        storage=storage,
        work_root=tmp_path / "work",
        owner=WORKER,
    )
    return Env(runner, store, storage, redis, store.keys, tmp_path)


async def test_a_stale_job_ends_superseded_before_fetching_anything(env: Env) -> None:
    await submit(env, "job-old")
    await submit(env, "job-new")
    await env.store.transition("job-old", Status.QUEUED, push=env.keys.queue)  # no source

    outcome, lines = await run(env, "job-old")

    assert outcome.status is Status.SUPERSEDED
    assert outcome.fields["superseded_by"] == "job-new"
    assert "url" not in outcome.fields  # nothing was published, so there is no preview
    assert any("buildq: superseded by job-new: submission 2" in line for line in lines)
    assert not any("fetched source" in line for line in lines)


async def test_a_pinned_commit_already_live_ends_live_without_building(env: Env) -> None:
    source = repository(env.tmp / "repo", {"index.html": "v"})
    await submit(env, "job-1", ref="c0ffee")
    await ingested(env, "job-1", source)  # resolved to commit c0ffee
    first, _ = await run(env, "job-1")
    await env.store.transition("job-1", first.status, ack=env.keys.active(WORKER))
    await submit(env, "job-2", ref="c0ffee")
    await env.store.transition("job-2", Status.QUEUED, push=env.keys.queue, commit="c0ffee")

    again, lines = await run(env, "job-2")

    assert first.status is Status.LIVE
    assert again.status is Status.LIVE
    assert again.fields["served_by"] == "job-1"
    assert again.fields["url"] == first.fields["url"]
    assert not any("fetched source" in line or "published" in line for line in lines)
    assert await env.redis.hget(env.keys.site("site"), "id") == "job-1"


async def test_a_job_made_stale_while_it_waited_for_the_lock_is_superseded_then(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = repository(env.tmp / "repo", {"index.html": "v"})
    await submit(env, "job-old")
    await ingested(env, "job-old", source)
    checks = 0
    real = env.runner.staleness.check

    async def check_then_submit(rec: JobRecord):  # type: ignore[no-untyped-def]
        nonlocal checks
        checks += 1
        decision = await real(rec)
        if checks == 1:  # a newer submission arrives while this one takes the lock
            await submit(env, "job-new")
        return decision

    monkeypatch.setattr(env.runner.staleness, "check", check_then_submit)

    outcome, lines = await run(env, "job-old")

    assert checks == 2
    assert outcome.status is Status.SUPERSEDED
    assert outcome.fields["superseded_by"] == "job-new"
    assert "-p:building:start" not in outcome.fields  # it did spend its wait building
    assert not any("fetched source" in line for line in lines)


def test_the_cli_names_the_job_that_superseded_or_served_a_deploy() -> None:
    superseded = outcome({"status": "superseded", "superseded_by": "j7", "url": None})
    served = outcome({"status": "live", "served_by": "j3", "url": "http://web.localhost/"})

    assert (superseded.code, superseded.message) == (0, "superseded by j7 before building")
    assert (served.code, served.message) == (0, "live: http://web.localhost/ (served by j3)")
