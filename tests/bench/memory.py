"""Memory: a deployer's idle RSS and its growth over many no-op jobs (under
``buildq up``), and Redis bytes per queued job (a fresh valkey, filled through
:class:`shared.engine.jobs.JobStore` directly)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.cli.embedded import free_port, start_valkey, stop_process
from shared.core.settings import load_settings
from shared.engine.jobs import JobStore, Status, new_job_id
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from tests.bench.batch import Watcher, submit_many
from tests.bench.benchstack import BenchError, BenchStack, start_stack
from tests.bench.goals import Goal

MIB = 1024 * 1024
IDLE_SETTLE_S = 3.0
IDLE_GOAL_MIB = 60
GROWTH_GOAL = 0.10
FILL_CONCURRENCY = 100


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class DeployerMemory:
    idle: int
    warm: int
    after: int
    warmup_jobs: int
    jobs: int
    live: int

    @property
    def growth(self) -> float:
        return (self.after - self.warm) / self.warm


def _run_batch(stack: BenchStack, repo: Path, prefix: str, count: int, limit_s: float) -> int:
    watcher = Watcher(stack)
    try:
        ids = submit_many(stack, repo, [f"{prefix}-{i}" for i in range(count)])
        result = watcher.wait_ended(ids, limit_s)
        if not result.done or result.live != count:
            raise BenchError(
                f"{prefix}: {dict(result.statuses)} of {count} after {limit_s:g} s: "
                f"{watcher.errors(ids)}"
            )
    finally:
        watcher.close()
    return result.live


def deployer_memory(
    repo: Path, scratch: Path, *, warmup_jobs: int, jobs: int, limit_s: float
) -> DeployerMemory:
    """One deployer (16 slots): RSS idle, after ``warmup_jobs`` and after ``jobs`` more."""
    environ = {"BUILDQ_DEPLOYER_SLOTS": "16", "BUILDQ_INGEST_SLOTS": "8"}
    stack = start_stack(scratch / "memory", deployers=1, environ=environ)
    try:
        (deployer,) = stack.deployers()
        time.sleep(IDLE_SETTLE_S)  # imports done, first heartbeats sent
        idle = rss_bytes(deployer.pid)
        _run_batch(stack, repo, "warm", warmup_jobs, limit_s)
        warm = rss_bytes(deployer.pid)
        live = _run_batch(stack, repo, "noop", jobs, limit_s)
        after = rss_bytes(deployer.pid)
        if stack.deployers() != [deployer]:
            raise BenchError("the deployer was restarted during the run")
    finally:
        stack.stop()
    return DeployerMemory(idle, warm, after, warmup_jobs, jobs, live)


async def _fill(url: str, count: int) -> tuple[int, int]:
    settings = load_settings(environ={}, redis_url=url, namespace="bench-memory")
    keys = Keys(settings.namespace)
    redis = make_redis(settings)
    store = JobStore(redis, keys, settings)
    commit = "0123456789abcdef0123456789abcdef01234567"

    async def queue_one(n: int) -> None:
        # What a job in the build queue went through: submit, clone, upload, queue.
        job_id = new_job_id()
        repo_url = f"https://git.example.com/team/site-{n % 10}.git"
        await store.submit(job_id, service=f"site-{n % 10}", repo_url=repo_url)
        await store.transition(job_id, Status.CLONING)
        await store.transition(job_id, Status.UPLOADING, commit=commit)
        await store.transition(job_id, Status.QUEUED, ack=keys.ingest, push=keys.queue)

    try:
        await queue_one(0)  # the shared keys (events stream, indexes) exist before
        before = int((await redis.info("memory"))["used_memory"])
        for start in range(1, count + 1, FILL_CONCURRENCY):
            batch = range(start, min(start + FILL_CONCURRENCY, count + 1))
            await asyncio.gather(*(queue_one(n) for n in batch))
        after = int((await redis.info("memory"))["used_memory"])
        queued = int(await redis.llen(keys.queue))
    finally:
        await redis.aclose()
    if queued != count + 1:
        raise BenchError(f"{queued} jobs queued, expected {count + 1}")
    return before, after


def redis_bytes_per_job(count: int) -> float:
    """used_memory growth per queued job, on a fresh valkey without persistence."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as data:
        port = free_port()
        server = start_valkey(Path(data), port, appendonly=False)
        try:
            before, after = asyncio.run(_fill(f"redis://127.0.0.1:{port}/0", count))
        finally:
            stop_process(server)
    return (after - before) / count


def memory_table(
    deployer: DeployerMemory, per_job: float, queued: int
) -> tuple[list[str], list[Goal]]:
    rows = [
        ("idle deployer RSS (16 slots)", f"{deployer.idle / MIB:.1f} MiB",
         f"goal <= {IDLE_GOAL_MIB} MiB"),
        (f"RSS after {deployer.warmup_jobs} warm-up jobs", f"{deployer.warm / MIB:.1f} MiB",
         "boto3 and the S3 client load with the first job"),
        (f"RSS after {deployer.jobs} more no-op jobs", f"{deployer.after / MIB:.1f} MiB",
         f"growth {deployer.growth:+.1%} over the warm RSS (goal < {GROWTH_GOAL:.0%}); "
         f"{(deployer.after - deployer.idle) / MIB:+.1f} MiB over idle"),
        ("Redis bytes per queued job", f"{per_job:.0f} B",
         f"at {queued:,} queued (INFO used_memory delta; no goal)"),
    ]  # fmt: skip
    lines = [f"{what:<38}{value:>10}   {note}".rstrip() for what, value, note in rows]
    goals = [
        Goal("memory.idle_deployer_rss_mib", deployer.idle / MIB, IDLE_GOAL_MIB),
        Goal("memory.deployer_rss_growth", deployer.growth, GROWTH_GOAL),
    ]
    return lines, goals


def run_memory(
    repo: Path, scratch: Path, *, jobs: int, queued: int, limit_s: float, say: Callable[[str], None]
) -> tuple[list[str], list[Goal]]:
    warmup = max(50, jobs // 25)
    deployer = deployer_memory(repo, scratch, warmup_jobs=warmup, jobs=jobs, limit_s=limit_s)
    say(f"memory: {deployer.live}/{deployer.jobs} no-op jobs live")
    per_job = redis_bytes_per_job(queued)
    return memory_table(deployer, per_job, queued)
