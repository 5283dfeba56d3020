"""shared/engine/stats.py and lua/_stats.lua on fakeredis: endings, retries and
cancellations are counted by the script that makes them, exactly once; phase and
lock-wait histograms; jobs in flight; and /metrics' rendering of it all."""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.engine.jobs import JobRecord, JobStore, Status
from shared.engine.outcome import outcome_line
from shared.engine.queue import Queue
from shared.engine.recovery import recover_stale_workers
from shared.engine.stages import BUILD
from shared.engine.stats import (
    BOUNDS_MS,
    bucket_field,
    count_lock_wait,
    count_recoveries,
    histogram,
    lock_wait_ms,
    parse_stats,
    read_inflight,
    read_stats,
)
from shared.redis.keys import Keys
from uploader.metrics import StatsCollector

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio


async def queued(store: JobStore, clock: FakeClock, job_id: str) -> None:
    """A job through ingest: 1 s accepted, 2 s cloning, 3 s uploading, then queued."""
    k = store.keys
    await store.submit(job_id, service="site", repo_url="https://h/org/site")
    clock.advance(1)
    await store.transition(job_id, Status.CLONING)
    clock.advance(2)
    await store.transition(job_id, Status.UPLOADING)
    clock.advance(3)
    await store.transition(job_id, Status.QUEUED, ack=k.ingest, push=k.queue)


async def building(store: JobStore, clock: FakeClock, job_id: str, active: str) -> None:
    """Queued for 4 s, then taken into ``active`` and building."""
    await queued(store, clock, job_id)
    clock.advance(4)
    await store.transition(job_id, Status.BUILDING, ack=store.keys.queue, push=active)


# --- the bucket layout --------------------------------------------------------


def test_the_lua_buckets_are_the_python_buckets() -> None:
    text = resources.files("shared.redis").joinpath("lua", "_stats.lua").read_text("utf-8")
    found = re.search(r"STATS_BOUNDS_MS = \{([^}]*)\}", text)
    assert found is not None
    assert tuple(int(b) for b in found.group(1).split(",")) == BOUNDS_MS


@pytest.mark.parametrize(
    ("ms", "field"),
    [(0, "s:le:10"), (10, "s:le:10"), (11, "s:le:50"), (3600000, "s:le:3600000")],
)
def test_an_observation_falls_in_the_first_bucket_that_holds_it(ms: int, field: str) -> None:
    assert bucket_field("s", ms) == field


def test_beyond_the_last_bound_is_the_inf_bucket() -> None:
    assert bucket_field("s", 3600001) == "s:le:inf"


def test_a_histogram_is_read_back_cumulative_in_seconds() -> None:
    raw = {"s:le:10": "2", "s:le:1000": "1", "s:le:inf": "1", "s:sum_ms": "9000"}

    h = histogram(raw, "s")

    assert h.buckets[0] == (0.01, 2)
    assert dict(h.buckets)[0.5] == 2
    assert dict(h.buckets)[1.0] == 3
    assert h.buckets[-1] == (float("inf"), 4)
    assert (h.sum_s, h.count) == (9.0, 4)


def test_the_count_is_the_sum_of_the_buckets_whatever_an_older_count_field_says() -> None:
    # Versions before 2026-12-04 also kept '<series>:count'; it always equalled the sum.
    raw = {"s:le:10": "2", "s:le:inf": "1", "s:sum_ms": "90", "s:count": "7"}

    assert histogram(raw, "s").count == 3


def test_a_phase_is_reported_once_it_has_observations() -> None:
    stats = parse_stats({"phase:custom:le:10": "1", "phase:custom:sum_ms": "5"})

    assert stats.phases["custom"].count == 1


def test_an_empty_hash_reports_every_status_and_phase_at_zero() -> None:
    stats = parse_stats({})

    assert stats.deployments == {"cancelled": 0, "failed": 0, "live": 0, "superseded": 0}
    assert set(stats.phases) == {
        "accepted",
        "cloning",
        "uploading",
        "queued",
        "building",
        "publishing",
        "total",
    }
    assert all(h.count == 0 for h in stats.phases.values())
    assert (stats.retries, stats.recoveries, stats.dead_letters) == (0, 0, 0)


# --- counted by the transition that ends the job ---------------------------------


async def test_a_job_that_goes_live_is_counted_with_each_phase_it_finished(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    await building(store, clock, "job-a", keys.active("w1"))
    clock.advance(5)
    await store.transition("job-a", Status.PUBLISHING)
    clock.advance(0.2)

    await store.transition("job-a", Status.LIVE, ack=keys.active("w1"))

    stats = await read_stats(store.redis, keys)
    assert stats.deployments["live"] == 1
    expected = {"accepted": 1, "cloning": 2, "uploading": 3, "queued": 4, "building": 5}
    for phase, seconds in expected.items():
        h = stats.phases[phase]
        assert (h.count, h.sum_s) == (1, seconds), phase
    assert stats.phases["publishing"].sum_s == 0.2
    assert dict(stats.phases["publishing"].buckets)[0.1] == 0
    assert dict(stats.phases["publishing"].buckets)[0.25] == 1
    assert (stats.phases["total"].count, stats.phases["total"].sum_s) == (1, 15.2)
    assert "live" not in stats.phases  # started, never finished: not observed


async def test_ending_a_job_twice_counts_it_once(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    await building(store, clock, "job-a", keys.active("w1"))
    await store.transition("job-a", Status.FAILED, ack=keys.active("w1"), error="x")

    again = await store.transition("job-a", Status.FAILED, ack=keys.active("w1"), error="x")

    assert not again.changed
    stats = await read_stats(store.redis, keys)
    assert stats.deployments["failed"] == 1
    assert stats.phases["total"].count == 1


async def test_a_take_that_ends_a_job_counts_it_and_its_dead_letter(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    queue = Queue(store, BUILD, keys.active("w1"), fields={"worker": "w1"})
    await queued(store, clock, "job-a")
    await queue.wait(0.1)
    end = store.move("job-a", Status.FAILED, ack=queue.active, push=keys.dead, dead="1")

    taken = await queue.take(end)

    assert taken.ended is not None
    assert taken.ended.changed
    assert await store.redis.lrange(keys.dead, 0, -1) == ["job-a"]
    stats = await read_stats(store.redis, keys)
    assert (stats.deployments["failed"], stats.dead_letters) == (1, 1)


async def test_a_retry_is_counted_and_is_not_an_ending(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    await building(store, clock, "job-a", keys.active("w1"))
    due = int(clock() * 1000) + 5000

    await store.transition(
        "job-a", Status.RETRYING, ack=keys.active("w1"), delay_until_ms=due, error="x"
    )

    stats = await read_stats(store.redis, keys)
    assert stats.retries == 1
    assert sum(stats.deployments.values()) == 0
    assert stats.phases["total"].count == 0


async def test_other_moves_count_nothing(store: JobStore, keys: Keys, clock: FakeClock) -> None:
    await building(store, clock, "job-a", keys.active("w1"))

    assert await store.redis.exists(keys.stats) == 0


async def test_a_cancel_is_counted_once_and_the_workers_late_end_is_not(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    await building(store, clock, "job-a", keys.active("w1"))
    clock.advance(2)

    await store.cancel("job-a", "changed my mind")
    await store.cancel("job-a", "changed my mind")
    await store.transition("job-a", Status.CANCELLED, ack=keys.active("w1"))

    stats = await read_stats(store.redis, keys)
    assert stats.deployments["cancelled"] == 1
    assert (stats.phases["building"].count, stats.phases["building"].sum_s) == (1, 2)


# --- counted beside the event ----------------------------------------------------


def record(**fields: str) -> JobRecord:
    base = {"id": "j", "status": "building", "service": "s", "repo_url": "u", "seq": "1"}
    return JobRecord.from_hash({**base, "created_at": "0", "updated_at": "0", **fields})


def test_lock_wait_runs_from_when_the_job_first_found_the_lock_held() -> None:
    waited = record(**{"waiting_since": "1000", "p:building:start": "9000"})

    assert lock_wait_ms(waited, 12_000) == 11_000


def test_lock_wait_of_a_job_that_never_waited_runs_from_its_build_start() -> None:
    assert lock_wait_ms(record(**{"p:building:start": "9000"}), 9_250) == 250
    assert lock_wait_ms(record(), 9_250) == 0


async def test_lock_waits_and_recoveries_add_up(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await count_lock_wait(redis, keys, record(**{"p:building:start": "0"}), 40)
    await count_lock_wait(redis, keys, record(**{"p:building:start": "0"}), 70_000)
    await count_recoveries(redis, keys, 2)
    await count_recoveries(redis, keys, 0)

    stats = await read_stats(redis, keys)
    assert stats.lock_wait is not None
    assert (stats.lock_wait.count, stats.lock_wait.sum_s) == (2, 70.04)
    assert dict(stats.lock_wait.buckets)[0.05] == 1
    assert dict(stats.lock_wait.buckets)[60.0] == 1
    assert dict(stats.lock_wait.buckets)[120.0] == 2
    assert stats.recoveries == 2


async def test_recovering_a_stale_workers_jobs_counts_each_job(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    active = keys.active("dead-worker")
    await building(store, clock, "job-a", active)
    await building(store, clock, "job-b", active)
    await store.redis.zadd(keys.workers, {"dead-worker": int(clock() * 1000)})
    clock.advance(600)

    moved = await recover_stale_workers(store.redis, store, stale_s=60, lock_ttl_ms=1000)

    assert sorted(job for _, job in moved) == ["job-a", "job-b"]
    assert (await read_stats(store.redis, keys)).recoveries == 2


# --- in flight -------------------------------------------------------------------


async def test_inflight_is_waiting_in_any_queue_plus_running_on_any_worker(
    store: JobStore, keys: Keys, clock: FakeClock
) -> None:
    await store.submit("in-ingest", service="site", repo_url="https://h/org/site")
    await queued(store, clock, "in-queue")
    await building(store, clock, "on-w1", keys.active("w1"))
    await building(store, clock, "on-w2", keys.active("w2"))
    await building(store, clock, "retrying", keys.active("w2"))
    await store.transition(
        "retrying", Status.RETRYING, ack=keys.active("w2"), delay_until_ms=10**13
    )
    await store.redis.zadd(keys.workers, {"w1": 1, "w2": 1})

    inflight = await read_inflight(store.redis, keys)

    assert (inflight.waiting, inflight.running, inflight.total) == (3, 2, 5)


# --- rendering -------------------------------------------------------------------


def scrape(raw: dict[str, str]) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(StatsCollector(parse_stats(raw)))
    text = generate_latest(registry).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_the_stats_render_as_prometheus_counters_and_histograms() -> None:
    raw = {
        "deployments:live": "3",
        "deployments:failed": "1",
        "retries": "2",
        "recoveries": "1",
        "dead_letters": "1",
        "phase:building:le:1000": "2",
        "phase:building:le:inf": "1",
        "phase:building:sum_ms": "4000000",
        "lock_wait:le:10": "4",
        "lock_wait:sum_ms": "12",
    }

    got = scrape(raw)

    assert got["buildq_deployments_total{status=live}"] == 3
    assert got["buildq_deployments_total{status=superseded}"] == 0
    assert got["buildq_retries_total{}"] == 2
    assert got["buildq_recoveries_total{}"] == 1
    assert got["buildq_dead_letters_total{}"] == 1
    assert got["buildq_phase_seconds_bucket{le=0.5,phase=building}"] == 0
    assert got["buildq_phase_seconds_bucket{le=1.0,phase=building}"] == 2
    assert got["buildq_phase_seconds_bucket{le=+Inf,phase=building}"] == 3
    assert got["buildq_phase_seconds_count{phase=building}"] == 3
    assert got["buildq_phase_seconds_sum{phase=building}"] == 4000
    assert got["buildq_phase_seconds_count{phase=total}"] == 0
    assert got["buildq_lock_wait_seconds_count{}"] == 4
    assert got["buildq_lock_wait_seconds_sum{}"] == 0.012


# --- the outcome line --------------------------------------------------------------


def test_the_outcome_line_carries_status_attempts_and_each_phase_in_ms() -> None:
    raw = {
        "id": "j",
        "service": "s",
        "repo_url": "u",
        "seq": "1",
        "created_at": "0",
        "updated_at": "9000",
        "status": "failed",
        "attempts": "2",
        "ended_at": "9000",
        "error": "build exited with status 1",
        "p:queued:start": "1000",
        "p:queued:end": "1500",
        "p:building:start": "1500",
        "p:building:end": "9000",
        "p:failed:start": "9000",
    }

    line = outcome_line(raw)

    assert line == {
        "status": "failed",
        "attempts": 2,
        "ingest_attempts": 0,
        "phases_ms": {"queued": 500, "building": 7500},
        "total_ms": 9000,
        "error": "build exited with status 1",
    }
