"""Same-host recovery (shared/engine/recovery.py, shared/core/host.py) on fakeredis
with Lua and real processes of this machine: a worker of this host whose process has
ended gives its jobs back at once, with no heartbeat timeout; workers this host
cannot judge are left to the stale timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import fakeredis
import pytest
from structlog.testing import capture_logs

from shared.coord.ended import release_locks_of_ended
from shared.coord.lockbook import MANUAL_TASK, LockBook
from shared.core.host import ProcessRef, locate, process_ended, this_host, this_process
from shared.engine.jobs import JobStore, Status
from shared.engine.logs import read_log
from shared.engine.recovery import recover_dead_workers, recover_same_host_workers
from shared.engine.stages import BUILD, INGEST, Stage
from shared.engine.workers import Registry
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio

DEAD = "deployer-dead-1"
ALIVE = "deployer-alive-1"
INTERVAL_MS = 2000


# --- processes of this host ----------------------------------------------------------


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def ended() -> ProcessRef:
    """A process of this host that was killed and reaped: its pid is gone."""
    proc = _child()
    ref = locate(proc.pid)
    proc.kill()
    proc.wait()
    return ref


@pytest.fixture
def zombie() -> Iterator[ProcessRef]:
    """A process of this host that was killed and not reaped yet (its pid still exists)."""
    proc = _child()
    ref = locate(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, left unreaped
    try:
        yield ref
    finally:
        proc.wait()


# --- the one place that knows how workers, claims and recovery are called ----------


async def register(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    clock: FakeClock,
    worker: str,
    *,
    process: ProcessRef,
    stage: Stage = BUILD,
) -> None:
    """``worker``, run by ``process``, heartbeats now (by the FakeClock)."""
    registry = Registry(
        redis,
        keys,
        worker,
        kind=stage.name,
        slots=2,
        queue=stage.queue(keys),
        clock=clock,
        process=process,
    )
    await registry.beat(0)


async def submit(store: JobStore, job_id: str, stage: Stage = BUILD) -> None:
    await store.submit(job_id, service="site", repo_url="https://h/org/site")
    if stage is BUILD:
        await store.transition(
            job_id, Status.QUEUED, ack=store.keys.ingest, push=store.keys.queue, commit="c0ffee"
        )


async def claim_as(store: JobStore, worker: str, stage: Stage = BUILD) -> str:
    """``worker`` claims the next job of ``stage`` as a consumer does (counting the attempt)."""
    claimed = await store.take(
        stage.queue(store.keys),
        store.keys.active(worker),
        stage.started_status,
        incr={stage.attempts_field: 1},
        worker=worker,
    )
    assert claimed is not None
    return claimed.job_id


async def running(
    redis: fakeredis.FakeAsyncRedis,
    store: JobStore,
    clock: FakeClock,
    worker: str,
    *,
    process: ProcessRef,
    job_id: str = "job-a",
) -> None:
    """``job_id`` is being built by ``worker`` of ``process``."""
    await submit(store, job_id)
    await register(redis, store.keys, clock, worker, process=process)
    assert await claim_as(store, worker) == job_id


async def status(store: JobStore, job_id: str) -> Status:
    record = await store.get(job_id)
    assert record is not None
    return record.status


async def log_lines(redis: fakeredis.FakeAsyncRedis, keys: Keys, job_id: str) -> list[str]:
    return [entry.text for entry in await read_log(redis, keys, job_id)]


# --- a worker whose process has ended ---------------------------------------------


async def test_a_killed_workers_job_goes_back_to_the_head_of_the_queue_at_once(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    await running(redis, store, clock, DEAD, process=ended)
    await submit(store, "job-b")

    recovered = await recover_same_host_workers(redis, store)  # no time has passed

    assert recovered == [(DEAD, "job-a")]
    assert list(reversed(await redis.lrange(keys.queue, 0, -1))) == ["job-a", "job-b"]
    assert await status(store, "job-a") == Status.QUEUED


async def test_the_requeued_job_says_which_process_on_this_host_is_gone(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    await running(redis, store, clock, DEAD, process=ended)

    await recover_same_host_workers(redis, store)

    reason = f"worker {DEAD} (pid {ended.pid} on this host) is gone"
    assert f"buildq: requeued: {reason}" in await log_lines(redis, keys, "job-a")


async def test_the_ended_worker_is_forgotten(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    await running(redis, store, clock, DEAD, process=ended)

    await recover_same_host_workers(redis, store)

    assert await redis.zscore(keys.workers, DEAD) is None
    assert not await redis.exists(keys.worker(DEAD), keys.active(DEAD))


async def test_the_recovered_attempt_counts_and_the_next_claim_counts_one_more(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    await running(redis, store, clock, DEAD, process=ended)
    await recover_same_host_workers(redis, store)
    await register(redis, keys, clock, ALIVE, process=this_process())

    await claim_as(store, ALIVE)

    record = await store.get("job-a")
    assert record is not None
    assert (record.attempts, record.worker, record.status) == (2, ALIVE, Status.BUILDING)


async def test_a_killed_ingest_workers_job_goes_back_to_ingest(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    await submit(store, "job-a", INGEST)
    await register(redis, keys, clock, "ingest-dead-1", process=ended, stage=INGEST)
    await claim_as(store, "ingest-dead-1", INGEST)

    assert await recover_same_host_workers(redis, store) == [("ingest-dead-1", "job-a")]

    assert await redis.lrange(keys.ingest, 0, -1) == ["job-a"]
    assert await status(store, "job-a") == Status.ACCEPTED


async def test_a_killed_but_unreaped_process_counts_as_ended(
    redis: fakeredis.FakeAsyncRedis, store: JobStore, clock: FakeClock, zombie: ProcessRef
) -> None:
    await running(redis, store, clock, DEAD, process=zombie)

    assert await recover_same_host_workers(redis, store) == [(DEAD, "job-a")]


async def test_a_pid_now_naming_a_later_process_counts_as_ended(
    redis: fakeredis.FakeAsyncRedis, store: JobStore, clock: FakeClock
) -> None:
    me = this_process()
    earlier = replace(me, started=me.started - 1)  # the pid's previous owner

    await running(redis, store, clock, DEAD, process=earlier)

    assert await recover_same_host_workers(redis, store) == [(DEAD, "job-a")]


async def test_a_worker_of_this_host_under_an_earlier_boot_is_recovered(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    me = this_process()
    before_reboot = replace(me, host=replace(me.host, boot_id="an-earlier-boot"))
    await running(redis, store, clock, DEAD, process=before_reboot)
    here = replace(this_host(), booted_at_ms=int(clock() * 1000) + 60_000)  # it beat before

    assert await recover_same_host_workers(redis, store, here=here) == [(DEAD, "job-a")]

    reason = f"worker {DEAD} (pid {me.pid} on this host before it rebooted) is gone"
    assert f"buildq: requeued: {reason}" in await log_lines(redis, keys, "job-a")


# --- workers this host cannot judge -------------------------------------------------


async def test_a_live_worker_of_this_host_is_left_alone(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    await running(redis, store, clock, ALIVE, process=this_process())

    assert await recover_same_host_workers(redis, store) == []

    assert await redis.lrange(keys.active(ALIVE), 0, -1) == ["job-a"]
    assert await status(store, "job-a") == Status.BUILDING
    assert await redis.zscore(keys.workers, ALIVE) is not None


@pytest.mark.parametrize(
    "elsewhere",
    [
        pytest.param({"host_id": "other-host", "boot_id": "other-boot"}, id="another host"),
        pytest.param({"pid_ns": "pid:[1]"}, id="another pid namespace (a container)"),
        pytest.param({"boot_id": ""}, id="a host that does not know its boot id"),
    ],
)
async def test_a_dead_pid_that_is_not_this_hosts_to_judge_is_left_to_the_stale_timeout(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    *,
    ended: ProcessRef,
    elsewhere: dict[str, str],
) -> None:
    elsewhere_ref = replace(ended, host=replace(ended.host, **elsewhere))
    await running(redis, store, clock, DEAD, process=elsewhere_ref)

    assert await recover_same_host_workers(redis, store) == []

    assert await redis.lrange(keys.active(DEAD), 0, -1) == ["job-a"]
    assert await status(store, "job-a") == Status.BUILDING


async def test_a_clone_of_this_host_still_beating_since_this_boot_is_left_alone(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, clock: FakeClock
) -> None:
    me = this_process()
    clone = replace(me, host=replace(me.host, boot_id="the-clones-boot"))  # same machine id
    await running(redis, store, clock, DEAD, process=clone)
    here = replace(this_host(), booted_at_ms=int(clock() * 1000) - 60_000)  # it beat since

    assert await recover_same_host_workers(redis, store, here=here) == []

    assert await status(store, "job-a") == Status.BUILDING


async def test_a_worker_that_registered_no_process_fields_is_left_alone(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    await running(redis, store, clock, DEAD, process=ended)
    await redis.hdel(keys.worker(DEAD), "boot_id", "pid_ns", "host_id", "pid_start")  # older

    assert await recover_same_host_workers(redis, store) == []

    assert await status(store, "job-a") == Status.BUILDING


async def test_this_host_without_a_boot_id_judges_nobody(
    redis: fakeredis.FakeAsyncRedis, store: JobStore, clock: FakeClock, ended: ProcessRef
) -> None:
    await running(redis, store, clock, DEAD, process=ended)

    here = replace(this_host(), boot_id="")
    assert await recover_same_host_workers(redis, store, here=here) == []


# --- when it runs --------------------------------------------------------------------


async def test_a_periodic_check_looks_only_at_workers_a_heartbeat_late(
    redis: fakeredis.FakeAsyncRedis, store: JobStore, clock: FakeClock, ended: ProcessRef
) -> None:
    await running(redis, store, clock, DEAD, process=ended)

    assert await recover_same_host_workers(redis, store, late_ms=INTERVAL_MS) == []
    clock.advance(INTERVAL_MS / 1000)
    assert await recover_same_host_workers(redis, store, late_ms=INTERVAL_MS) == [(DEAD, "job-a")]


async def test_a_workers_first_round_recovers_this_hosts_ended_workers_before_judging_staleness(
    redis: fakeredis.FakeAsyncRedis, store: JobStore, clock: FakeClock, ended: ProcessRef
) -> None:
    await running(redis, store, clock, DEAD, process=ended)

    recovered = await recover_dead_workers(
        redis, store, first=True, judge_stale=False, interval_s=2.0, stale_s=300.0
    )

    assert recovered == [(DEAD, "job-a")]


async def test_two_recoverers_at_once_requeue_and_log_each_job_once(
    redis: fakeredis.FakeAsyncRedis,
    keys: Keys,
    store: JobStore,
    clock: FakeClock,
    ended: ProcessRef,
) -> None:
    for job_id in ("job-a", "job-b"):
        await running(redis, store, clock, DEAD, process=ended, job_id=job_id)
    results: list[list[tuple[str, str]]] = []

    async def one() -> None:
        results.append(await recover_same_host_workers(redis, store))

    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)

    assert sorted(pair for result in results for pair in result) == [
        (DEAD, "job-a"),
        (DEAD, "job-b"),
    ]
    assert sorted(await redis.lrange(keys.queue, 0, -1)) == ["job-a", "job-b"]
    for job_id in ("job-a", "job-b"):
        requeued = [t for t in await log_lines(redis, keys, job_id) if "requeued" in t]
        assert len(requeued) == 1, requeued
    events = [entry["event"] for entry in logs]
    assert events.count("recovery.requeued") == 2
    assert events.count("recovery.worker_removed") == 1


# --- what an ended worker held beyond the queue ---------------------------------------


async def hold(book: LockBook, service: str, owner: str, task: str = "deploy") -> None:
    """``owner`` holds ``service``'s lock, taken in this process."""
    got = await book.acquire(
        [service], token=f"{owner}-{service}", owner=owner, ttl_ms=30_000, task=task
    )
    assert got.record.owner == owner


async def test_an_ended_workers_deploy_locks_are_released_at_once(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    book = LockBook(redis, keys, events_max=100)
    await hold(book, "site-a", DEAD)
    await hold(book, "site-b", DEAD)

    released = await release_locks_of_ended(book, DEAD, os.getpid())

    assert sorted(released) == ["site-a", "site-b"]
    assert await book.holder("site-a") is None
    last = await book.last_holder("site-a")
    assert last is not None
    assert (last.owner, last.released_by) == (DEAD, f"recovery:{DEAD}")


async def test_locks_of_another_worker_process_or_a_person_are_left_alone(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    book = LockBook(redis, keys, events_max=100)
    await hold(book, "theirs", ALIVE)
    await hold(book, "manual", DEAD, task=MANUAL_TASK)  # a person named like the worker
    await hold(book, "mine", DEAD)

    assert await release_locks_of_ended(book, DEAD, os.getpid() + 1) == []  # another pid
    assert await release_locks_of_ended(book, DEAD, os.getpid()) == ["mine"]

    assert [r.service for r in await book.held_locks()] == ["theirs", "manual"]


async def test_the_ended_hook_runs_once_per_ended_worker_after_its_jobs_are_requeued(
    redis: fakeredis.FakeAsyncRedis, store: JobStore, clock: FakeClock, ended: ProcessRef
) -> None:
    await running(redis, store, clock, DEAD, process=ended)
    await running(redis, store, clock, ALIVE, process=this_process(), job_id="job-b")
    calls: list[tuple[str, int, Status]] = []

    async def on_ended(worker_id: str, pid: int) -> None:
        calls.append((worker_id, pid, await status(store, "job-a")))

    await recover_same_host_workers(redis, store, on_ended=on_ended)

    assert calls == [(DEAD, ended.pid, Status.QUEUED)]


# --- the host and its processes ------------------------------------------------------


async def test_a_worker_registers_its_host_boot_pid_namespace_and_process_start(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    registry = Registry(redis, keys, ALIVE, kind="deployer", slots=1, queue=keys.queue, clock=clock)

    await registry.beat(0)

    me, info = this_process(), await redis.hgetall(keys.worker(ALIVE))
    assert info["host_id"] == me.host.host_id
    assert info["boot_id"] == me.host.boot_id
    assert info["pid_ns"] == me.host.pid_ns
    assert (info["pid"], info["pid_start"]) == (str(os.getpid()), str(me.started))


def test_this_linux_host_knows_its_boot_pid_namespace_and_boot_time() -> None:
    here = this_host()
    assert here.host_id
    assert here.boot_id
    assert here.pid_ns.startswith("pid:[")
    assert here.booted_at_ms > 0
    assert this_process().started > 0


def test_this_process_has_not_ended() -> None:
    me = this_process()
    assert not process_ended(me.pid, me.started)
    assert not process_ended(me.pid, 0)


def test_a_reaped_process_has_ended(ended: ProcessRef) -> None:
    assert process_ended(ended.pid, ended.started)
    assert process_ended(ended.pid, 0)


@pytest.mark.parametrize("pid", [0, -1])
def test_a_pid_that_would_address_a_process_group_is_never_judged_ended(pid: int) -> None:
    assert not process_ended(pid, 0)
