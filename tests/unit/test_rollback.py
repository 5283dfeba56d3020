"""Instant rollback: rollback.lua (through Sites.rollback) moves the live alias back
as a new promotion, with a new seq and fence, so an older deploy in flight is
superseded and a later one still goes live; shared/coord/rollback.py picks the
previous live deployment and refuses, changing nothing, what cannot go live."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest

from shared.coord.rollback import RollbackRefused, Rollbacks
from shared.coord.sites import Rollback, RolledBack, Sites, Verdict
from shared.core.errors import ValidationError
from shared.core.settings import load_settings
from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from shared.storage.gc import DEFAULT_KEEP_RECENT
from shared.storage.manifest import manifest_key
from shared.storage.s3 import S3Storage, Storage, alias_key, make_s3_client, record_key
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.anyio

SERVICE = "web"


@pytest.fixture
def sites(redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock) -> Sites:
    return Sites(redis, keys, events_max=1000, clock=clock)


async def submit(store: JobStore, job_id: str, service: str = SERVICE) -> int:
    return await store.submit(job_id, service=service, repo_url=f"https://h/o/{service}")


async def end_as(redis: fakeredis.FakeAsyncRedis, keys: Keys, job_id: str, status: Status) -> None:
    """Mark a job ended as ``status`` (the pipeline's end, without running one)."""
    await redis.hset(keys.job(job_id), mapping={"status": status.value, "ended_at": 1})


async def deployed(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, job_id: str
) -> int:
    """Submit, promote (under a fresh fence, as a lock holder) and end ``job_id`` live."""
    seq = await submit(store, job_id)
    fence = await redis.incr(keys.fence(SERVICE))
    assert (await sites.promote(SERVICE, job_id, seq, fence=fence)).outcome is Verdict.PROMOTED
    await end_as(redis, keys, job_id, Status.LIVE)
    return seq


async def snapshot(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> dict[str, Any]:
    return {
        "site": await redis.hgetall(keys.site(SERVICE)),
        "seq": await redis.get(keys.seq(SERVICE)),
        "fence": await redis.get(keys.fence(SERVICE)),
        "events": await redis.xlen(keys.events),
        "promotions": await redis.lrange(keys.promotions(SERVICE), 0, -1),
    }


# --- rollback.lua ------------------------------------------------------------------


async def test_rollback_then_a_stale_deploy_in_flight_is_superseded_and_a_later_one_wins(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await deployed(sites, store, redis, keys, "job-1")
    await deployed(sites, store, redis, keys, "job-2")
    # job-3 was submitted and holds the deploy lock (fence 3) when the rollback comes.
    seq3 = await submit(store, "job-3")
    in_flight_fence = await redis.incr(keys.fence(SERVICE))

    result = await sites.rollback(SERVICE, "job-1", expected_live="job-2", by="ada")

    assert result == Rollback(RolledBack.ROLLED_BACK, seq=seq3 + 1, fence=in_flight_fence + 1)
    live = await sites.live(SERVICE)
    assert live["id"] == "job-1"
    assert live["seq"] == str(seq3 + 1)
    assert (live["rollback"], live["from"], live["by"]) == ("1", "job-2", "ada")

    stale = await sites.promote(SERVICE, "job-3", seq3, fence=in_flight_fence)
    assert stale.outcome is Verdict.SUPERSEDED
    assert (stale.live_id, stale.live_seq) == ("job-1", seq3 + 1)
    assert (await sites.live(SERVICE))["id"] == "job-1"

    seq4 = await submit(store, "job-4")  # submitted after the rollback
    fence4 = await redis.incr(keys.fence(SERVICE))
    assert (await sites.promote(SERVICE, "job-4", seq4, fence=fence4)).outcome is Verdict.PROMOTED
    live = await sites.live(SERVICE)
    assert live["id"] == "job-4"
    assert "rollback" not in live  # a plain promotion again
    assert "from" not in live


async def test_an_old_lock_holder_with_a_newer_seq_is_fenced_off(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    """Belt and braces: even a seq above the rollback's cannot promote on a fence
    taken before it."""
    await deployed(sites, store, redis, keys, "job-1")
    await deployed(sites, store, redis, keys, "job-2")
    old_fence = await redis.incr(keys.fence(SERVICE))
    await sites.rollback(SERVICE, "job-1", expected_live=None, by="ada")

    result = await sites.promote(SERVICE, "job-9", 10_000, fence=old_fence)

    assert result.outcome is Verdict.FENCED
    assert (await sites.live(SERVICE))["id"] == "job-1"


async def test_rollback_is_announced_and_kept_in_the_promotion_history(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await deployed(sites, store, redis, keys, "job-1")
    await deployed(sites, store, redis, keys, "job-2")

    await sites.rollback(SERVICE, "job-1", expected_live=None, by="ada")

    at = int(clock() * 1000)
    *_, last = [f for _, f in await redis.xrange(keys.events)]
    assert last == {
        "kind": "site",
        "service": SERVICE,
        "id": "job-1",
        "seq": "3",
        "at": str(at),
        "rollback": "1",
        "from": "job-2",
        "by": "ada",
    }
    history = await sites.promotions(SERVICE)
    assert [(e["id"], e["rollback"]) for e in history] == [
        ("job-1", True),
        ("job-2", False),
        ("job-1", False),
    ]
    assert history[0] == {
        "id": "job-1",
        "seq": 3,
        "at": at,
        "rollback": True,
        "from": "job-2",
        "by": "ada",
    }


async def test_rolling_back_to_the_live_deployment_changes_nothing(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await deployed(sites, store, redis, keys, "job-1")
    before = await snapshot(redis, keys)

    result = await sites.rollback(SERVICE, "job-1", expected_live=None, by="ada")

    assert result.outcome is RolledBack.ALREADY_LIVE
    assert await snapshot(redis, keys) == before


async def test_a_live_alias_that_moved_since_the_choice_changes_nothing(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await deployed(sites, store, redis, keys, "job-1")
    await deployed(sites, store, redis, keys, "job-2")
    await deployed(sites, store, redis, keys, "job-3")  # promoted after the caller looked
    before = await snapshot(redis, keys)

    result = await sites.rollback(SERVICE, "job-1", expected_live="job-2", by="ada")

    assert result == Rollback(RolledBack.MOVED, live_id="job-3")
    assert await snapshot(redis, keys) == before


async def test_the_promotion_history_is_capped(
    sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    from shared.coord.sites import PROMOTIONS_MAX

    for seq in range(1, PROMOTIONS_MAX + 6):
        await sites.promote(SERVICE, f"job-{seq}", seq)

    assert await redis.llen(keys.promotions(SERVICE)) == PROMOTIONS_MAX
    assert (await sites.promotions(SERVICE, limit=1))[0]["id"] == f"job-{PROMOTIONS_MAX + 5}"


# --- shared/coord/rollback.py ------------------------------------------------------


@dataclass
class Env:
    """The rollback checks and everything they read."""

    rollbacks: Rollbacks
    sites: Sites
    store: JobStore
    redis: fakeredis.FakeAsyncRedis
    keys: Keys
    storage: Storage

    async def published(self, job_id: str) -> None:
        """A deployment that went live, with its manifest in S3."""
        await deployed(self.sites, self.store, self.redis, self.keys, job_id)
        await self.storage.put_json(manifest_key(job_id), {"stand-in": "only its key is read"})

    async def live_id(self) -> str:
        return (await self.sites.live(SERVICE))["id"]


@pytest.fixture
async def env(
    aws: None, sites: Sites, store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> Env:
    settings = load_settings({"BUILDQ_S3_BUCKET": "unit-rollback"})
    storage = S3Storage(make_s3_client(settings), settings.s3_bucket, concurrency=4)
    await storage.ensure_bucket()
    return Env(Rollbacks(sites, store, storage), sites, store, redis, keys, storage)


A, B = "a" * 20, "b" * 20


@pytest.fixture
async def two_live(env: Env) -> Env:
    await env.published(A)
    await env.published(B)
    return env


async def test_by_default_the_previous_live_deployment_comes_back_and_again_undoes_it(
    two_live: Env,
) -> None:
    env = two_live
    target, result = await env.rollbacks.roll_back(SERVICE, None, by="ada")

    assert target == A
    assert await env.live_id() == A
    alias = json.loads((await env.storage.get(alias_key(SERVICE)))[0])
    assert (alias["id"], alias["seq"], alias["rollback"], alias["from"]) == (A, result.seq, True, B)

    again, _ = await env.rollbacks.roll_back(SERVICE, None, by="ada")
    assert again == B
    assert await env.live_id() == B


async def test_a_deployment_only_s3_remembers_can_come_back(two_live: Env) -> None:
    env = two_live
    record = await env.store.get(A)
    assert record is not None
    await env.storage.put_json(record_key(A), record.model_dump(mode="json"))
    await env.redis.delete(env.keys.job(A))  # its record expired from Redis

    target, _ = await env.rollbacks.roll_back(SERVICE, A, by="ada")

    assert target == A
    assert await env.live_id() == A


@pytest.mark.parametrize(
    ("setup", "to", "missing", "message"),
    [
        ("none", "c" * 20, True, "no deployment"),
        ("other-service", "c" * 20, False, "is of service docs, not web"),
        ("failed", "c" * 20, False, "was never published (it is failed)"),
        ("collected", "c" * 20, False, "are gone (garbage-collected"),
        ("stale-at-claim", "c" * 20, False, "superseded by " + "b" * 20 + " before it built"),
        ("served", "c" * 20, False, "has no files of its own"),
        ("none", B, False, "is already live"),
    ],
)
async def test_what_cannot_go_live_is_refused_and_nothing_changes(
    two_live: Env, setup: str, to: str, missing: bool, message: str
) -> None:
    env = two_live
    if setup == "other-service":
        await submit(env.store, to, service="docs")
        await end_as(env.redis, env.keys, to, Status.LIVE)
        await env.storage.put_json(manifest_key(to), {})
    elif setup == "failed":
        await submit(env.store, to)
        await end_as(env.redis, env.keys, to, Status.FAILED)
    elif setup in ("stale-at-claim", "served"):
        await submit(env.store, to)
        status = Status.SUPERSEDED if setup == "stale-at-claim" else Status.LIVE
        await end_as(env.redis, env.keys, to, status)
        field = "superseded_by" if setup == "stale-at-claim" else "served_by"
        await env.redis.hset(env.keys.job(to), field, B)
    elif setup == "collected":
        await submit(env.store, to)
        await end_as(env.redis, env.keys, to, Status.LIVE)  # live once; its manifest is gone
    before = await snapshot(env.redis, env.keys)
    alias_before = await env.storage.exists(alias_key(SERVICE))

    with pytest.raises(RollbackRefused, match=re.escape(message)) as refused:
        await env.rollbacks.roll_back(SERVICE, to, by="ada")

    assert refused.value.missing is missing
    assert await snapshot(env.redis, env.keys) == before
    assert await env.storage.exists(alias_key(SERVICE)) is alias_before


async def test_with_nothing_earlier_there_is_nothing_to_roll_back_to(env: Env) -> None:
    await env.published(A)

    with pytest.raises(RollbackRefused, match="no earlier live deployment"):
        await env.rollbacks.roll_back(SERVICE, None, by="ada")


async def test_a_malformed_deployment_id_is_a_validation_error(env: Env) -> None:
    with pytest.raises(ValidationError, match="invalid deployment id"):
        await env.rollbacks.roll_back(SERVICE, "../etc/passwd", by="ada")


def test_gc_keeps_by_default_what_buildq_keep_deployments_defaults_to() -> None:
    assert load_settings({}).keep_deployments == DEFAULT_KEEP_RECENT == 10
    assert load_settings({"BUILDQ_KEEP_DEPLOYMENTS": "25"}).keep_deployments == 25
