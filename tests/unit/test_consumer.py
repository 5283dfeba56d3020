"""shared/engine/consumer.py on fakeredis with Lua: the run loop claims, runs the
handler and moves the job on. Each test drives the loop for as many jobs as it
needs and stops it from inside the handler (or after an event the handler set);
nothing waits on wall-clock time, and the FakeClock decides every due time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import fakeredis
import pytest

from shared.core.errors import TransientError
from shared.core.settings import Settings, load_settings
from shared.engine.consumer import Consumer
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.engine.logs import LogWriter, read_log
from shared.engine.outcome import Outcome
from shared.engine.scheduler import release_due
from shared.engine.stages import INGEST
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

WORKER = "ingest-unit-1"
Handler = Callable[[JobRecord, LogWriter], Awaitable[Outcome]]


def fast_settings(**extra: str) -> Settings:
    return load_settings({"BUILDQ_MAX_ATTEMPTS": "3", "BUILDQ_RETRY_BASE_S": "1", **extra})


# The one place that knows how a consumer of the ingest stage is constructed.
def make_consumer(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    settings: Settings,
    clock: FakeClock,
    handler: Handler,
    *,
    worker_id: str = WORKER,
    slots: int = 1,
    on_end: Callable[[dict[str, str]], Awaitable[None]] | None = None,
    after_first_run: Callable[[], None] | None = None,
) -> Consumer:
    server = redis.connection_pool.connection_kwargs["server"]
    return Consumer(
        redis,
        keys,
        settings,
        stage=INGEST,
        worker_id=worker_id,
        slots=slots,
        handler=handler,
        blocking_redis=lambda: fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
        on_end=on_end,
        after_first_run=after_first_run,
        clock=clock,
    )


async def submit(store: JobStore, job_id: str) -> None:
    await store.submit(job_id, service="site", repo_url="https://h/org/site")


async def next_ids(redis: fakeredis.FakeAsyncRedis, key: str) -> list[str]:
    """The ids of a list in the order they will be claimed (the head first)."""
    return list(reversed(await redis.lrange(key, 0, -1)))


async def run_until_stopped(consumer: Consumer, stopping: anyio.Event) -> None:
    """Run the consumer's loop until the test (or its handler) sets ``stopping``."""
    with anyio.fail_after(20):
        await consumer.run(stopping)


async def test_claims_jobs_in_submission_order_and_runs_the_handler(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    for job_id in ("job-a", "job-b", "job-c"):
        await submit(store, job_id)
    seen: list[tuple[str, Status]] = []
    stopping = anyio.Event()

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append((record.id, record.status))
        if len(seen) == 3:
            stopping.set()
        return Outcome(Status.LIVE)

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler)
    await run_until_stopped(consumer, stopping)

    assert seen == [("job-a", Status.CLONING), ("job-b", Status.CLONING), ("job-c", Status.CLONING)]


async def test_a_successful_job_is_acked_and_recorded_with_its_fields(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    stopping = anyio.Event()
    ended: list[dict[str, str]] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        stopping.set()
        return Outcome(Status.LIVE, {"url": "http://site.localhost"})

    async def on_end(raw: dict[str, str]) -> None:
        ended.append(raw)

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler, on_end=on_end)
    await run_until_stopped(consumer, stopping)

    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.LIVE
    assert record.url == "http://site.localhost"
    assert record.worker == WORKER
    assert record.ingest_attempts == 1
    assert await redis.llen(keys.active(WORKER)) == 0
    assert await redis.llen(keys.ingest) == 0
    assert [raw["status"] for raw in ended] == ["live"]


async def test_after_the_first_run_has_fully_ended_the_hook_runs_once(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    for job_id in ("job-a", "job-b", "job-c"):
        await submit(store, job_id)
    stopping = anyio.Event()
    seen: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append(record.id)
        if record.id == "job-c":
            stopping.set()
        # The first job moves on to the next list: the hook waits for that, too.
        return (
            Outcome(Status.QUEUED, push=keys.queue)
            if record.id == "job-a"
            else Outcome(Status.LIVE)
        )

    async def status_of_a() -> str:
        record = await store.get("job-a")
        assert record is not None
        return record.status.value

    def after() -> None:
        seen.append("hook")

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler, after_first_run=after)
    await run_until_stopped(consumer, stopping)

    assert seen == ["job-a", "hook", "job-b", "job-c"]
    assert await status_of_a() == "queued"


async def test_an_outcome_with_a_push_hands_the_job_to_the_next_list(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    stopping = anyio.Event()

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        stopping.set()
        return Outcome(Status.QUEUED, {"commit": "abc123"}, push=keys.queue)

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    record = await store.get("job-a")
    assert record is not None
    assert (record.status, record.commit) == (Status.QUEUED, "abc123")
    assert await next_ids(redis, keys.queue) == ["job-a"]
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_a_transient_error_retries_later_through_delayed_with_backoff(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    stopping = anyio.Event()

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        stopping.set()
        raise TransientError("the remote end hung up")

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.RETRYING
    assert record.error == "the remote end hung up"
    assert record.retry_stage == "ingest"
    assert record.ended_at is None
    due = await redis.zscore(keys.delayed, "job-a")
    now = int(clock() * 1000)
    # First retry: base 1 s with equal jitter, so due between 0.5 s and 1 s from now.
    assert due is not None
    assert now + 500 <= due <= now + 1000
    assert await redis.llen(keys.ingest) == 0
    assert await redis.llen(keys.active(WORKER)) == 0
    lines = [e.text for e in await read_log(redis, keys, "job-a")]
    assert any("retrying in" in line for line in lines)


async def test_a_permanent_error_fails_the_job_without_a_retry(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    stopping = anyio.Event()
    calls = 0

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        nonlocal calls
        calls += 1
        stopping.set()
        raise KeyError("a bug in the handler")

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.FAILED
    assert record.error == "internal error: KeyError"
    assert record.dead is False
    assert calls == 1
    assert await redis.zcard(keys.delayed) == 0
    assert await redis.llen(keys.dead) == 0
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_a_failed_outcome_from_the_handler_ends_the_job(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    stopping = anyio.Event()

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        stopping.set()
        return Outcome(Status.FAILED, {"error": "repository not found"})

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    record = await store.get("job-a")
    assert record is not None
    assert (record.status, record.error) == (Status.FAILED, "repository not found")
    lines = [e.text for e in await read_log(redis, keys, "job-a")]
    assert "buildq: deployment failed: repository not found" in lines


async def test_a_job_that_keeps_failing_transiently_is_dead_lettered_after_max_attempts(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    settings = fast_settings(BUILDQ_MAX_ATTEMPTS="2")
    await submit(store, "job-a")
    attempts: list[int] = []

    async def attempt() -> None:
        stopping = anyio.Event()

        async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
            attempts.append(record.ingest_attempts)
            stopping.set()
            raise TransientError("connection reset")

        await run_until_stopped(make_consumer(redis, keys, settings, clock, handler), stopping)

    await attempt()
    clock.advance(settings.retry_cap_s)  # past any backoff
    assert await release_due(redis, keys, store) == (1, None)
    await attempt()

    record = await store.get("job-a")
    assert record is not None
    assert attempts == [1, 2]
    assert record.status is Status.FAILED
    assert record.dead is True
    assert record.error == "gave up after 2 attempts: connection reset"
    assert await redis.lrange(keys.dead, 0, -1) == ["job-a"]
    assert await redis.zcard(keys.delayed) == 0


async def test_a_job_whose_worker_died_on_its_last_attempt_is_dead_lettered_unrun(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    settings = fast_settings(BUILDQ_MAX_ATTEMPTS="1")
    await submit(store, "job-a")
    stopping = anyio.Event()

    async def hang(record: JobRecord, writer: LogWriter) -> Outcome:
        stopping.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    # A first worker starts the job and is stopped without grace: the job goes back.
    first = make_consumer(
        redis,
        keys,
        load_settings({"BUILDQ_MAX_ATTEMPTS": "1", "BUILDQ_GRACE_PERIOD_S": "0"}),
        clock,
        hang,
        worker_id="ingest-unit-0",
    )
    await run_until_stopped(first, stopping)
    assert await next_ids(redis, keys.ingest) == ["job-a"]

    stopping = anyio.Event()
    ran: list[str] = []

    async def never(record: JobRecord, writer: LogWriter) -> Outcome:
        ran.append(record.id)
        return Outcome(Status.LIVE)

    async def on_end(raw: dict[str, str]) -> None:
        stopping.set()

    await run_until_stopped(
        make_consumer(redis, keys, settings, clock, never, on_end=on_end), stopping
    )

    record = await store.get("job-a")
    assert record is not None
    assert ran == []
    assert (record.status, record.dead, record.ingest_attempts) == (Status.FAILED, True, 2)
    assert record.error is not None
    assert record.error.startswith("gave up after 1 attempt: ")
    assert await redis.lrange(keys.dead, 0, -1) == ["job-a"]


async def test_stopping_lets_a_running_job_finish_and_claims_nothing_more(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await submit(store, "job-b")
    started, release, stopping = anyio.Event(), anyio.Event(), anyio.Event()
    seen: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append(record.id)
        started.set()
        await release.wait()
        return Outcome(Status.LIVE)

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_until_stopped, consumer, stopping)
        await started.wait()
        stopping.set()
        release.set()

    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.LIVE
    assert seen == ["job-a"]
    assert await next_ids(redis, keys.ingest) == ["job-b"]
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_a_job_cut_off_by_shutdown_is_requeued_at_the_head_of_its_queue(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await submit(store, "job-b")
    stopping = anyio.Event()

    async def hang(record: JobRecord, writer: LogWriter) -> Outcome:
        stopping.set()  # shutdown arrives while the job runs; no grace period
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    settings = fast_settings(BUILDQ_GRACE_PERIOD_S="0")
    await run_until_stopped(make_consumer(redis, keys, settings, clock, hang), stopping)

    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.ACCEPTED
    assert record.ended_at is None
    assert await next_ids(redis, keys.ingest) == ["job-a", "job-b"]
    assert await redis.llen(keys.active(WORKER)) == 0
    assert await redis.zscore(keys.workers, WORKER) is None
    lines = [e.text for e in await read_log(redis, keys, "job-a")]
    assert any(line.startswith("buildq: requeued: ") for line in lines)


async def test_a_cancelled_running_job_is_stopped_and_leaves_the_active_list(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    started, cut_off, stopping = anyio.Event(), anyio.Event(), anyio.Event()

    async def hang(record: JobRecord, writer: LogWriter) -> Outcome:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cut_off.set()
        raise AssertionError("unreachable")

    # A short heartbeat: the fallback that notices an ended job runs every beat, so
    # the test does not depend on the pub/sub subscription being up in time.
    settings = fast_settings(BUILDQ_HEARTBEAT_INTERVAL_S="0.05")
    consumer = make_consumer(redis, keys, settings, clock, hang)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_until_stopped, consumer, stopping)
        await started.wait()
        await store.cancel("job-a", "cancelled by a test")
        with anyio.fail_after(10):
            await cut_off.wait()
        stopping.set()

    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.CANCELLED
    assert await redis.llen(keys.active(WORKER)) == 0
    assert await redis.llen(keys.ingest) == 0


async def test_a_job_cancelled_before_it_was_claimed_is_skipped(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await submit(store, "job-b")
    await store.cancel("job-a", "changed my mind")
    await redis.lpush(keys.ingest, "job-a")  # a stale copy, as a lost reply leaves one
    stopping = anyio.Event()
    seen: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append(record.id)
        stopping.set()
        return Outcome(Status.LIVE)

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    assert seen == ["job-b"]
    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.CANCELLED
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_the_worker_registers_while_running_and_unregisters_on_stop(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    stopping = anyio.Event()
    registered: list[Any] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        registered.append(await redis.zscore(keys.workers, WORKER))
        registered.append(await redis.hget(keys.worker(WORKER), "kind"))
        stopping.set()
        return Outcome(Status.LIVE)

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    assert registered[0] is not None
    assert registered[1] == "ingest"
    assert await redis.zscore(keys.workers, WORKER) is None
    assert not await redis.exists(keys.worker(WORKER))


async def test_slots_run_jobs_concurrently(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await submit(store, "job-b")
    both_running = anyio.Event()
    stopping = anyio.Event()
    running: set[str] = set()

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        running.add(record.id)
        if len(running) == 2:
            both_running.set()
        await both_running.wait()  # only returns once the other slot runs a job too
        stopping.set()
        return Outcome(Status.LIVE)

    await run_until_stopped(
        make_consumer(redis, keys, fast_settings(), clock, handler, slots=2), stopping
    )

    assert running == {"job-a", "job-b"}
    for job_id in running:
        record = await store.get(job_id)
        assert record is not None
        assert record.status is Status.LIVE


async def test_an_id_whose_start_was_lost_is_started_by_the_next_take_not_requeued(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    # BLMOVE moved the id into the active list and the start behind it never ran (a
    # lost connection): it waits there, and the next take of any slot starts it.
    await submit(store, "job-a")
    await redis.lmove(keys.ingest, keys.active(WORKER), "RIGHT", "LEFT")
    stopping = anyio.Event()
    seen: list[tuple[str, Status, int]] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append((record.id, record.status, record.ingest_attempts))
        stopping.set()
        return Outcome(Status.LIVE)

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler)
    for _ in range(2):  # the orphan check leaves it alone: a take would race it
        await consumer._check_orphans()
    assert await redis.lrange(keys.active(WORKER), 0, -1) == ["job-a"]
    assert await redis.llen(keys.ingest) == 0

    await run_until_stopped(consumer, stopping)

    assert seen == [("job-a", Status.CLONING, 1)]
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_a_started_job_that_no_slot_holds_is_requeued_by_the_orphan_check(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    # The take started it but its reply was lost: no slot runs it and no take will.
    await submit(store, "job-a")
    await redis.lmove(keys.ingest, keys.active(WORKER), "RIGHT", "LEFT")
    await store.transition("job-a", Status.CLONING, incr={"ingest_attempts": 1})

    async def never(record: JobRecord, writer: LogWriter) -> Outcome:
        raise AssertionError("not run")

    consumer = make_consumer(redis, keys, fast_settings(), clock, never)
    await consumer._check_orphans()  # first sighting: only suspected
    assert await redis.lrange(keys.active(WORKER), 0, -1) == ["job-a"]
    await consumer._check_orphans()  # second sighting: requeued

    assert await redis.llen(keys.active(WORKER)) == 0
    assert await next_ids(redis, keys.ingest) == ["job-a"]
    record = await store.get("job-a")
    assert record is not None
    assert record.status is Status.ACCEPTED


async def test_ending_a_job_takes_the_next_in_the_same_call(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.engine.queue import Queue

    for job_id in ("job-a", "job-b", "job-c"):
        await submit(store, job_id)
    waits: list[float] = []
    wait = Queue.wait

    async def counted_wait(self: Queue, timeout_s: float) -> Any:
        waits.append(timeout_s)
        return await wait(self, timeout_s)

    monkeypatch.setattr(Queue, "wait", counted_wait)
    stopping = anyio.Event()
    seen: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append(record.id)
        if len(seen) == 3:
            stopping.set()
        return Outcome(Status.LIVE)

    await run_until_stopped(make_consumer(redis, keys, fast_settings(), clock, handler), stopping)

    assert seen == ["job-a", "job-b", "job-c"]
    assert len(waits) == 1  # only the first take blocked; each end took the next
    for job_id in seen:
        assert await redis.hget(keys.job(job_id), "status") == "live"
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_a_job_cancelled_after_its_take_and_before_its_handler_never_runs(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    # job-b is taken by job-a's final transition; the cancel arrives while job-a's
    # end hook runs, before job-b's handler has started.
    await submit(store, "job-a")
    await submit(store, "job-b")
    await submit(store, "job-c")
    stopping = anyio.Event()
    seen: list[str] = []
    consumer: Consumer | None = None

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append(record.id)
        if record.id == "job-c":
            stopping.set()
        return Outcome(Status.LIVE)

    async def on_end(raw: dict[str, str]) -> None:
        if raw["id"] == "job-a":
            assert consumer is not None
            assert "job-b" in consumer.taken
            await store.cancel("job-b", "changed my mind")
            await consumer._on_control({"type": "cancel", "id": "job-b"})

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler, on_end=on_end)
    await run_until_stopped(consumer, stopping)

    assert seen == ["job-a", "job-c"]
    record = await store.get("job-b")
    assert record is not None
    assert record.status is Status.CANCELLED
    assert await redis.llen(keys.active(WORKER)) == 0


async def test_a_job_taken_as_the_stop_begins_goes_back_to_the_head_unrun(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await submit(store, "job-a")
    await submit(store, "job-b")
    await submit(store, "job-c")
    stopping = anyio.Event()
    seen: list[str] = []

    async def handler(record: JobRecord, writer: LogWriter) -> Outcome:
        seen.append(record.id)
        return Outcome(Status.LIVE)

    consumer: Consumer | None = None

    async def on_end(raw: dict[str, str]) -> None:
        assert consumer is not None
        assert "job-b" in consumer.taken  # job-a's final transition has just taken it
        stopping.set()

    consumer = make_consumer(redis, keys, fast_settings(), clock, handler, on_end=on_end)
    await run_until_stopped(consumer, stopping)

    assert seen == ["job-a"]
    assert await next_ids(redis, keys.ingest) == ["job-b", "job-c"]
    record = await store.get("job-b")
    assert record is not None
    assert record.status is Status.ACCEPTED
    assert record.ingest_attempts == 0  # never run: its take's attempt is given back
    assert await redis.llen(keys.active(WORKER)) == 0
