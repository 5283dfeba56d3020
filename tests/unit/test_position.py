"""Queue positions and ETAs (uploader/position.py) and the build-duration history
behind them (uploader/durations.py), on fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from shared.cli import views
from shared.engine.fleet import write_fleet
from shared.engine.jobs import JobRecord, Phase, Status
from shared.engine.workers import Registry
from shared.redis.keys import Keys
from uploader import position
from uploader.durations import record_build, went_live
from uploader.loghub import StreamEntry
from uploader.position import (
    DURATIONS_KEPT,
    build_ms,
    estimate_eta_s,
    fleet_slots,
    place_of,
    position_from,
    positions,
    queue_position,
    recent_durations_ms,
)

pytestmark = pytest.mark.anyio


def record(job_id: str = "a" * 20, status: Status = Status.LIVE, **phases: Phase) -> JobRecord:
    return JobRecord(
        id=job_id,
        status=status,
        service="web",
        repo_url="https://example.com/web.git",
        seq=1,
        created_at=1,
        updated_at=1,
        ended_at=9_000 if status is Status.LIVE else None,
        phases=phases,
    )


async def test_position_counts_from_the_end_taken_next(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    for job_id in ("j1", "j2", "j3", "j4", "j5"):  # submitted in this order: LPUSH
        await redis.lpush(keys.queue, job_id)

    found = [await queue_position(redis, keys.queue, j) for j in ("j1", "j2", "j3", "j4", "j5")]

    assert found == [1, 2, 3, 4, 5]
    assert await queue_position(redis, keys.queue, "nope") is None
    assert await positions(redis, keys.queue, 3) == [
        {"id": "j1", "position": 1},
        {"id": "j2", "position": 2},
        {"id": "j3", "position": 3},
    ]


async def test_position_moves_up_when_a_job_ahead_leaves(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    for job_id in ("j1", "j2", "j3"):
        await redis.lpush(keys.queue, job_id)

    await redis.lrem(keys.queue, 0, "j2")

    assert await queue_position(redis, keys.queue, "j3") == 2


async def test_position_beyond_one_scan_is_found_from_the_back(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(position, "SCAN_MAX", 3)
    ids = [f"j{n}" for n in range(1, 8)]
    for job_id in ids:
        await redis.lpush(keys.queue, job_id)

    found = [await queue_position(redis, keys.queue, j) for j in ids]

    # Scans of 3 from each end reach positions 1-3 and 5-7; the middle is unknown.
    assert found == [1, 2, 3, None, 5, 6, 7]


@pytest.mark.parametrize(
    ("length", "from_tail", "from_head", "expected"),
    [(5, 4, 4, 1), (5, 0, 0, 5), (5, None, 1, 4), (5, None, None, None), (0, 0, 0, None)],
)
def test_position_from_indexes(
    length: int, from_tail: int | None, from_head: int | None, expected: int | None
) -> None:
    assert position_from(length, from_tail, from_head) == expected


@pytest.mark.parametrize(
    ("place", "durations", "slots", "expected"),
    [
        (1, [10_000], 2, 10.0),  # starts now, one build
        (2, [10_000], 2, 10.0),  # the second slot takes it at once
        (3, [10_000], 2, 20.0),  # waits for one wave
        (5, [4_000, 10_000, 6_000], 1, 30.0),  # median 6 s, five waves
        (1, [], 2, None),  # no history
        (1, [10_000], 0, None),  # paused, or no deployer
    ],
)
def test_eta_is_waves_of_the_median_build(
    place: int, durations: list[int], slots: int, expected: float | None
) -> None:
    assert estimate_eta_s(place, durations, slots) == expected


def test_build_time_runs_from_building_to_the_end_of_publishing() -> None:
    done = record(
        building=Phase(start=1_000, end=4_000, duration_ms=3_000),
        publishing=Phase(start=4_000, end=6_500, duration_ms=2_500),
    )
    unfinished = record(building=Phase(start=1_000))

    assert build_ms(done) == 5_500
    assert build_ms(unfinished) is None


async def test_durations_are_capped_and_recording_twice_is_a_no_op(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    for n in range(DURATIONS_KEPT + 5):
        rec = record(
            f"{n:020d}",
            building=Phase(start=0, end=1, duration_ms=1),
            publishing=Phase(start=1, end=1_000 + n, duration_ms=1),
        ).model_copy(update={"ended_at": 10_000 + n})
        await record_build(redis, keys, rec, ttl_s=60)
        await record_build(redis, keys, rec, ttl_s=60)  # a second uploader saw it too

    kept = await recent_durations_ms(redis, keys, "web")

    assert kept == [1_000 + n for n in range(5, DURATIONS_KEPT + 5)]
    assert 0 < await redis.ttl(keys.durations("web")) <= 60


def test_only_live_job_events_are_recorded() -> None:
    live = StreamEntry("1-0", {"kind": "job", "id": "j1", "status": "live"})
    failed = StreamEntry("2-0", {"kind": "job", "id": "j2", "status": "failed"})
    lock = StreamEntry("3-0", {"kind": "lock", "service": "web", "action": "acquired"})

    assert [went_live(e) for e in (live, failed, lock)] == ["j1", None, None]


async def register(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, worker_id: str, kind: str, slots: int
) -> None:
    await Registry(redis, keys, worker_id, kind=kind, slots=slots, queue=keys.queue).beat(0)


async def test_fleet_slots_follow_deployers_cap_and_pause(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await register(redis, keys, "deployer-a", "deployer", 2)
    await register(redis, keys, "deployer-b", "deployer", 3)
    await register(redis, keys, "ingest-a", "ingest", 8)

    assert await fleet_slots(redis, keys) == 5
    await write_fleet(redis, keys, max_concurrency=4)
    assert await fleet_slots(redis, keys) == 4
    await write_fleet(redis, keys, paused=True)
    assert await fleet_slots(redis, keys) == 0


async def test_a_queued_job_has_a_place_and_an_eta(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await register(redis, keys, "deployer-a", "deployer", 1)
    await redis.zadd(keys.durations("web"), {"x:8000": 1, "y:12000": 2})
    for job_id in ("j1", "j2"):
        await redis.lpush(keys.queue, job_id)
    queued = record("j2", Status.QUEUED)
    accepted = record("j3", Status.ACCEPTED)
    await redis.lpush(keys.ingest, "j3")

    place = await place_of(redis, keys, queued)

    assert (place.position, place.eta_s) == (2, 20.0)  # two waves of the 10 s median
    assert (await place_of(redis, keys, accepted)).position == 1
    assert await place_of(redis, keys, record("j4", Status.BUILDING)) == position.Place(None, None)


def test_status_of_a_queued_job_shows_position_and_eta_after_its_status() -> None:
    base = {"id": "j1", "status": "queued", "service": "web", "repo_url": "r", "phases": {}}

    waiting = views.job_listings({**base, "position": 3, "eta_s": 42.5})[0].rows
    done = views.job_listings({**base, "status": "live"})[0].rows

    assert list(waiting[:5]) == [
        ("id", "j1"),
        ("status", "queued"),
        ("position", 3),
        ("eta_s", 42.5),
        ("service", "web"),
    ]
    assert "position" not in [name for name, _ in done]
