"""shared/engine/jobs.py with submit.lua and transition.lua on fakeredis (Lua via lupa)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import fakeredis
import pytest

from shared.core.settings import load_settings
from shared.engine.jobs import (
    TERMINAL,
    JobRecord,
    JobStore,
    Status,
    Transition,
    new_job_id,
    redact_url,
)
from shared.engine.replies import Moved
from shared.engine.stages import BUILD
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio

JOB = "0123456789abcdef0123"
JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")


async def submit(store: JobStore, job_id: str = JOB, service: str = "site", **kw: object) -> int:
    return await store.submit(job_id, service=service, repo_url="https://h/org/site", **kw)  # type: ignore[arg-type]


async def events(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(keys.events)]


# --- pure helpers ---------------------------------------------------------


def test_new_job_id_is_20_lowercase_hex_digits() -> None:
    for _ in range(50):
        assert JOB_ID_RE.fullmatch(new_job_id())


def test_new_job_ids_sort_by_creation_time(clock: FakeClock) -> None:
    ids = []
    for _ in range(20):
        ids.append(new_job_id(clock))
        clock.advance(0.002)

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_job_ids_in_the_same_millisecond_differ(clock: FakeClock) -> None:

    assert len({new_job_id(clock) for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        ("https://token@github.com/org/repo", "https://***@github.com/org/repo"),
        ("https://u:p@git.example.com:8443/r", "https://***@git.example.com:8443/r"),
        ("https://github.com/org/repo", "https://github.com/org/repo"),
        ("file:///srv/repo", "file:///srv/repo"),
    ],
)
def test_redact_url_strips_userinfo(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@[::1]:8443/r", "https://***@[::1]:8443/r"),
        ("https://u:p@[2001:db8::1]/r", "https://***@[2001:db8::1]/r"),
    ],
)
def test_redact_url_keeps_an_ipv6_host_a_valid_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_never_raises_and_never_leaks_on_a_bad_port() -> None:
    out = redact_url("https://user:s3cret@github.com:99999/org/repo")

    assert "s3cret" not in out


def test_from_hash_builds_phases_with_durations() -> None:
    raw = {
        "id": JOB,
        "status": "building",
        "service": "site",
        "repo_url": "https://h/r",
        "seq": "3",
        "created_at": "1000",
        "updated_at": "1500",
        "attempts": "1",
        "error": "",
        "build": '{"command":"make","env":{"A":"1"}}',
        "p:accepted:start": "1000",
        "p:accepted:end": "1100",
        "p:queued:start": "1100",
        "p:queued:end": "1400",
        "p:building:start": "1400",
    }

    rec = JobRecord.from_hash(raw)

    assert rec.status is Status.BUILDING
    assert rec.seq == 3
    assert rec.error is None  # empty fields read as missing
    assert rec.build == {"command": "make", "env": {"A": "1"}}
    assert list(rec.phases) == ["accepted", "queued", "building"]
    assert rec.phases["accepted"].duration_ms == 100
    assert rec.phases["queued"].duration_ms == 300
    assert rec.phases["building"].start == 1400
    assert rec.phases["building"].end is None
    assert rec.phases["building"].duration_ms is None
    assert not rec.ended


def test_status_sets_are_disjoint_and_cover_the_end_states() -> None:
    assert {s.value for s in TERMINAL} == {"live", "failed", "cancelled", "superseded"}
    assert JobRecord.from_hash(
        {
            "id": JOB,
            "status": "superseded",
            "service": "s",
            "repo_url": "u",
            "seq": "1",
            "created_at": "1",
            "updated_at": "2",
        }
    ).ended


# --- submit ---------------------------------------------------------------


async def test_submit_creates_an_accepted_record(store: JobStore, clock: FakeClock) -> None:
    seq = await submit(
        store,
        ref="main",
        root_dir="site",
        build={"command": "make", "output": "dist"},
    )
    rec = await store.get(JOB)

    assert seq == 1
    assert rec is not None
    assert rec.id == JOB
    assert rec.status is Status.ACCEPTED
    assert rec.service == "site"
    assert rec.ref == "main"
    assert rec.root_dir == "site"
    assert rec.build == {"command": "***", "output": "dist"}  # the command is hidden
    assert rec.seq == 1
    assert rec.attempts == 0
    assert rec.created_at == rec.updated_at == int(clock() * 1000)
    assert rec.phases["accepted"].start == rec.created_at


SECRET_BUILD = {"command": "deploy --token=s3cr3t", "output": "dist", "env": {"API_KEY": "s3cr3t"}}


async def test_the_record_keeps_env_names_only_and_the_deployer_reads_the_real_build(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store, build=SECRET_BUILD)
    raw = await redis.hgetall(keys.job(JOB))
    rec = await store.get(JOB)

    assert rec is not None
    assert rec.build == {"command": "***", "output": "dist", "env": {"API_KEY": "***"}}
    assert "s3cr3t" not in repr(raw)
    assert "s3cr3t" not in rec.model_dump_json()
    assert await store.build_override(JOB) == SECRET_BUILD
    assert await redis.ttl(keys.build(JOB)) == -1  # lives as long as the job


async def test_the_private_build_goes_when_the_job_goes_live(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store, build=SECRET_BUILD)
    await store.transition(JOB, Status.LIVE)
    assert await store.build_override(JOB) is None


@pytest.mark.parametrize("how", ["failed", "cancelled"])
async def test_the_private_build_of_a_failed_job_expires_with_it_and_revives_with_it(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, how: str
) -> None:
    await submit(store, build=SECRET_BUILD)
    if how == "failed":
        await store.transition(JOB, Status.FAILED, error="boom")
    else:
        await store.cancel(JOB, "cancelled by test")
    assert 0 < await redis.ttl(keys.build(JOB)) <= await redis.ttl(keys.job(JOB))

    revived = await store.revive(JOB, BUILD)

    assert revived.changed
    assert await redis.ttl(keys.build(JOB)) == -1
    assert await store.build_override(JOB) == SECRET_BUILD


async def test_a_job_without_an_override_has_no_private_build(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store)
    assert await redis.exists(keys.build(JOB)) == 0
    assert await store.build_override(JOB) is None


async def test_submit_stores_the_repo_url_redacted(store: JobStore) -> None:
    await store.submit(JOB, service="s", repo_url="https://me:tok3n@github.com/o/r")

    raw = await store.get_raw(JOB)

    assert raw["repo_url"] == "https://***@github.com/o/r"
    assert "tok3n" not in str(raw)


async def test_submit_seq_increments_per_service(store: JobStore) -> None:
    a1 = await submit(store, "a" * 20, service="alpha")
    a2 = await submit(store, "b" * 20, service="alpha")
    b1 = await submit(store, "c" * 20, service="beta")
    a3 = await submit(store, "d" * 20, service="alpha")

    assert (a1, a2, a3) == (1, 2, 3)
    assert b1 == 1


async def test_submit_pushes_onto_ingest_in_fifo_order(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    for job_id in ("a" * 20, "b" * 20, "c" * 20):
        await submit(store, job_id)

    # LPUSH in, so the oldest id sits at the right end where BLMOVE takes from.
    assert await redis.lrange(keys.ingest, 0, -1) == ["c" * 20, "b" * 20, "a" * 20]
    assert await redis.llen(keys.queue) == 0


async def test_submit_indexes_the_job_by_creation_time(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await submit(store)

    assert await redis.zscore(keys.jobs, JOB) == int(clock() * 1000)


async def test_submit_trims_the_jobs_index_to_its_maximum_dropping_the_oldest(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    store = JobStore(redis, keys, load_settings({}, jobs_index_max=100), clock=clock)
    ids = [f"{i:020x}" for i in range(105)]
    for job_id in ids:
        await submit(store, job_id)
        clock.advance(0.002)

    indexed = await redis.zrange(keys.jobs, 0, -1)

    assert indexed == ids[5:]


async def test_submit_emits_an_accepted_event(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await submit(store)

    assert await events(redis, keys) == [
        {"kind": "job", "id": JOB, "status": "accepted", "at": str(int(clock() * 1000))}
    ]


# --- transition -----------------------------------------------------------


async def test_transition_sets_status_timestamps_and_phase_boundaries(
    store: JobStore, clock: FakeClock
) -> None:
    await submit(store)
    t0 = int(clock() * 1000)
    clock.advance(2.5)

    changed, record = await store.transition(JOB, Status.CLONING, fetch=True, worker="w1")

    t1 = t0 + 2500
    assert changed is True
    assert record["status"] == "cloning"
    assert record["updated_at"] == str(t1)
    assert record["worker"] == "w1"
    assert record["p:accepted:end"] == str(t1)
    assert record["p:cloning:start"] == str(t1)
    rec = await store.get(JOB)
    assert rec is not None
    assert rec.phases["accepted"].duration_ms == 2500
    assert rec.phases["cloning"].end is None


async def test_transition_without_fetch_returns_an_empty_record(store: JobStore) -> None:
    await submit(store)

    assert await store.transition(JOB, Status.CLONING) == Transition(Moved.CHANGED)


async def test_transition_of_an_unknown_job_changes_nothing(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await store.transition(JOB, Status.BUILDING) == Transition(Moved.UNKNOWN)
    assert await redis.exists(keys.job(JOB)) == 0
    assert await events(redis, keys) == []


async def test_transition_of_an_unknown_job_still_acks_it(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    """An expired job must not stay stuck in an active list forever."""
    await redis.lpush(keys.active("w1"), JOB)

    assert await store.transition(JOB, Status.FAILED, ack=keys.active("w1")) == Transition(
        Moved.UNKNOWN
    )
    assert await redis.llen(keys.active("w1")) == 0


async def test_transition_acks_and_pushes_in_one_step(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store)
    await redis.lmove(keys.ingest, keys.active("up"), "RIGHT", "LEFT")
    await redis.lpush(keys.queue, "older-job")

    changed, _ = await store.transition(JOB, Status.QUEUED, ack=keys.active("up"), push=keys.queue)

    assert changed
    assert await redis.llen(keys.active("up")) == 0
    # pushed at the tail: claimed after what was already queued
    assert await redis.lrange(keys.queue, 0, -1) == [JOB, "older-job"]
    assert await redis.rpop(keys.queue) == "older-job"


async def test_transition_with_head_pushes_so_it_is_claimed_next(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store)
    await redis.lpush(keys.queue, "older-job")

    await store.transition(JOB, Status.QUEUED, push=keys.queue, head=True)

    assert await redis.rpop(keys.queue) == JOB


async def test_transition_push_without_ack_leaves_other_lists_alone(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store)

    await store.transition(JOB, Status.QUEUED, push=keys.queue)

    assert await redis.lrange(keys.queue, 0, -1) == [JOB]
    assert await redis.lrange(keys.ingest, 0, -1) == [JOB]  # ingest untouched: no ack


async def test_transition_counts_attempts_only_when_asked(store: JobStore) -> None:
    await submit(store)

    await store.transition(JOB, Status.BUILDING, attempt=True)
    await store.transition(JOB, Status.RETRYING)
    await store.transition(JOB, Status.BUILDING, attempt=True)

    rec = await store.get(JOB)
    assert rec is not None
    assert rec.attempts == 2


async def test_transition_emits_an_event_and_a_phase_log_entry(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await submit(store)

    await store.transition(JOB, Status.CLONING)

    at = str(int(clock() * 1000))
    assert (await events(redis, keys))[-1] == {
        "kind": "job",
        "id": JOB,
        "status": "cloning",
        "at": at,
    }
    log = [f for _, f in await redis.xrange(keys.logs(JOB))]
    assert log == [{"kind": "phase", "status": "cloning", "at": at}]


async def test_terminal_transition_ends_the_job_with_ttl_and_end_entry(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    settings = load_settings({}, job_ttl_s=3600)
    store = JobStore(redis, keys, settings, clock=clock)
    await submit(store)
    await store.transition(JOB, Status.BUILDING)
    clock.advance(1)

    changed, record = await store.transition(JOB, Status.LIVE, fetch=True, url="https://x/")

    assert changed
    assert record["ended_at"] == str(int(clock() * 1000))
    assert record["url"] == "https://x/"
    assert 0 < await redis.ttl(keys.job(JOB)) <= 3600
    assert 0 < await redis.ttl(keys.logs(JOB)) <= 3600
    last = (await redis.xrange(keys.logs(JOB)))[-1][1]
    assert last["kind"] == "end"
    assert last["status"] == "live"
    rec = await store.get(JOB)
    assert rec is not None
    assert rec.ended
    assert rec.phases["building"].duration_ms == 1000


async def test_non_terminal_transition_sets_no_ttl(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store)
    await store.transition(JOB, Status.BUILDING)

    assert await redis.ttl(keys.job(JOB)) == -1


@pytest.mark.parametrize("end", sorted(TERMINAL))
async def test_an_ended_job_never_changes_again(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock, end: Status
) -> None:
    await submit(store)
    await store.transition(JOB, end)
    before = await store.get_raw(JOB)
    n_events = len(await events(redis, keys))
    clock.advance(5)

    for status in (Status.BUILDING, Status.QUEUED, Status.FAILED, Status.LIVE):
        result = await store.transition(
            JOB, status, push=keys.queue, attempt=True, fetch=True, error="late"
        )
        assert result == Transition(Moved.ENDED, end.value)
        assert tuple(result) == (False, {"status": end.value})

    assert await store.get_raw(JOB) == before
    assert await redis.llen(keys.queue) == 0
    assert len(await events(redis, keys)) == n_events


async def test_transition_of_an_ended_job_still_acks_it(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store)
    await store.transition(JOB, Status.CANCELLED)
    await redis.lpush(keys.active("w1"), JOB)

    result = await store.transition(JOB, Status.FAILED, ack=keys.active("w1"))

    assert result == Transition(Moved.ENDED, "cancelled")
    assert await redis.llen(keys.active("w1")) == 0


async def test_same_status_transition_keeps_the_phase_start(
    store: JobStore, clock: FakeClock
) -> None:
    await submit(store)
    await store.transition(JOB, Status.BUILDING)
    start = (await store.get_raw(JOB))["p:building:start"]
    clock.advance(3)

    await store.transition(JOB, Status.BUILDING, worker="w2")

    raw = await store.get_raw(JOB)
    assert raw["p:building:start"] == start
    assert "p:building:end" not in raw
    assert raw["worker"] == "w2"


async def test_re_entering_a_phase_starts_it_afresh(store: JobStore, clock: FakeClock) -> None:
    """A retried job's current phase is open, never 'ended' before it started."""
    await submit(store)
    for status in (Status.QUEUED, Status.BUILDING, Status.RETRYING, Status.QUEUED):
        clock.advance(1)
        await store.transition(JOB, status)
    clock.advance(1)
    await store.transition(JOB, Status.BUILDING)

    rec = await store.get(JOB)

    assert rec is not None
    building = rec.phases["building"]
    assert building.start == int(clock() * 1000)
    assert building.end is None
    assert building.duration_ms is None


# --- reads ----------------------------------------------------------------


async def test_get_returns_none_for_an_unknown_job(store: JobStore) -> None:
    assert await store.get(JOB) is None


async def test_recent_is_newest_first_and_filters(store: JobStore, clock: FakeClock) -> None:
    ids = [f"{i:020x}" for i in range(6)]
    for i, job_id in enumerate(ids):
        await submit(store, job_id, service="alpha" if i % 2 == 0 else "beta")
        clock.advance(1)
    await store.transition(ids[4], Status.FAILED)
    await store.transition(ids[1], Status.FAILED)

    everything = await store.recent()
    alpha = await store.recent(service="alpha")
    failed = await store.recent(status=Status.FAILED)
    alpha_failed = await store.recent(service="alpha", status=Status.FAILED)
    two = await store.recent(limit=2)

    assert [r.id for r in everything] == ids[::-1]
    assert [r.id for r in alpha] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in failed] == [ids[4], ids[1]]
    assert [r.id for r in alpha_failed] == [ids[4]]
    assert [r.id for r in two] == [ids[5], ids[4]]


async def test_recent_skips_index_entries_whose_record_expired(
    store: JobStore, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await submit(store, "a" * 20)
    await submit(store, "b" * 20)
    await redis.delete(keys.job("a" * 20))

    assert [r.id for r in await store.recent()] == ["b" * 20]


async def test_a_minus_field_is_deleted_after_the_moves_own_writes(store: JobStore) -> None:
    """``-name`` drops a field the move itself would write (a phase that never began)."""
    await store.submit("job-m", service="site", repo_url="https://h/org/site")
    await store.transition("job-m", Status.BUILDING, ack=store.keys.ingest)

    moved = await store.transition(
        "job-m",
        Status.SUPERSEDED,
        fetch=True,
        superseded_by="job-n",
        **{"-p:building:start": "", "-p:building:end": ""},
    )

    assert moved.reply is Moved.CHANGED
    raw = await store.get_raw("job-m")
    assert "p:building:start" not in raw
    assert "p:building:end" not in raw
    assert raw["p:superseded:start"] == raw["ended_at"]
    assert raw["superseded_by"] == "job-n"
    record = await store.get("job-m")
    assert record is not None
    assert "building" not in record.phases
