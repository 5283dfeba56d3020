"""Scaling with I/O-bound builds: P deployer processes x 16 slots, every build a
``sleep 0.2``. The jobs are queued while the fleet is paused; the clock runs from
resume to the last job's end. Ideal = slots x processes / 0.2 s. CPU use of the
machine, valkey and moto during the run says where a configuration saturates."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.bench.batch import Watcher, fleet, submit_many
from tests.bench.benchstack import ENDED, BenchError, BenchStack, start_stack
from tests.bench.goals import Goal

BUILD_S = 0.2
SATURATED = 0.9  # busy fraction of the machine, or of one core for valkey / moto
GOAL_OF_IDEAL = 0.9


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


def cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of a process and of its children it has waited for (builds)."""
    return sum(cpu_split(proc))


def cpu_split(proc: psutil.Process) -> tuple[float, float]:
    """CPU seconds of a process itself, and of the children it has waited for (for a
    deployer: its builds, each launcher with everything it reaped)."""
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0, 0.0
    return float(t.user + t.system), float(t.children_user + t.children_system)


@dataclass(frozen=True)
class ScaleResult:
    processes: int
    slots: int
    jobs: int
    live: int
    seconds: float
    machine_busy: float  # fraction of all cores
    valkey_cores: float
    moto_cores: float
    deployer_cores: float
    deployer_cpu_s: float  # the deployers' own CPU time
    builds_cpu_s: float  # their builds' (waited-for children's) CPU time
    done: bool

    @property
    def ideal_per_s(self) -> float:
        return self.processes * self.slots / BUILD_S

    @property
    def rate_per_s(self) -> float:
        return self.live / self.seconds if self.seconds > 0 else 0.0

    @property
    def of_ideal(self) -> float:
        return self.rate_per_s / self.ideal_per_s

    @property
    def cpu_ms_per_job(self) -> float:
        """The deployers' and their builds' CPU time per job that went live."""
        return self.own_ms_per_job + self.builds_ms_per_job

    @property
    def own_ms_per_job(self) -> float:
        return self.deployer_cpu_s * 1000 / self.live if self.live else 0.0

    @property
    def builds_ms_per_job(self) -> float:
        return self.builds_cpu_s * 1000 / self.live if self.live else 0.0

    @property
    def saturated(self) -> str:
        """What ran out during the run ('' when nothing did)."""
        found = []
        if self.machine_busy >= SATURATED:
            found.append(f"CPU {self.machine_busy:.0%} busy")
        if self.valkey_cores >= SATURATED:
            found.append(f"Redis {self.valkey_cores:.0%} of a core")
        if self.moto_cores >= SATURATED:
            found.append(f"S3 (moto) {self.moto_cores:.0%} of a core")
        return ", ".join(found)


def _moto(stack: BenchStack) -> psutil.Process | None:
    """The S3 server: the one the benchmark started, else one ``buildq up`` embeds."""
    if stack.moto is not None:
        return psutil.Process(stack.moto.pid)
    for child in psutil.Process(stack.proc.pid).children():
        if any("moto" in part for part in child.cmdline()):
            return child
    return None


def measure(
    stack: BenchStack, repo: Path, *, processes: int, slots: int, jobs: int, limit_s: float
) -> ScaleResult:
    """Queue ``jobs`` builds while paused, resume, and time them to the last end."""
    watcher = Watcher(stack)
    try:
        fleet(stack, paused=True)
        ids = submit_many(stack, repo, [f"scale-{processes}-{i}" for i in range(jobs)])
        queued = watcher.wait(ids, ("queued", *ENDED), limit_s)
        if queued.statuses["queued"] != jobs:
            raise BenchError(
                f"only {dict(queued.statuses)} of {jobs} jobs reached the queue: "
                f"{watcher.errors(ids)}"
            )
        valkey, moto, deployers = stack.valkey(), _moto(stack), stack.deployers()
        busy0, total0 = machine_busy()
        before = _cpu(valkey, moto, deployers)
        started_ms = time.time() * 1000
        wall0 = time.monotonic()
        fleet(stack, paused=False)
        ended = watcher.wait_ended(ids, limit_s)
        wall = time.monotonic() - wall0
        busy1, total1 = machine_busy()
        after = _cpu(valkey, moto, deployers)
    finally:
        watcher.close()
    seconds = (ended.last_ended_ms - started_ms) / 1000 if ended.done else wall
    spent = [a - b for a, b in zip(after, before, strict=True)]
    return ScaleResult(
        processes, slots, jobs, ended.live, seconds, (busy1 - busy0) / (total1 - total0),
        spent[0] / wall, spent[1] / wall, (spent[2] + spent[3]) / wall, spent[2], spent[3],
        ended.done,
    )  # fmt: skip


def _cpu(
    valkey: psutil.Process, moto: psutil.Process | None, deployers: list[psutil.Process]
) -> tuple[float, float, float, float]:
    """CPU seconds so far of valkey, moto, the deployers themselves and their builds."""
    own, builds = 0.0, 0.0
    for deployer in deployers:
        a, b = cpu_split(deployer)
        own, builds = own + a, builds + b
    return cpu_s(valkey), cpu_s(moto) if moto else 0.0, own, builds


def run_scaling(
    repo: Path,
    scratch: Path,
    *,
    processes: tuple[int, ...],
    slots: int,
    jobs_per_slot: int,
    limit_s: float,
    say: Callable[[str], None],
) -> list[ScaleResult]:
    """One fresh stack per process count (deployers with ``slots`` slots each)."""
    results = []
    for count in processes:
        environ = {"BUILDQ_DEPLOYER_SLOTS": str(slots), "BUILDQ_INGEST_SLOTS": "8"}
        stack = start_stack(scratch / f"scale-{count}", deployers=count, environ=environ)
        try:
            jobs = count * slots * jobs_per_slot
            results.append(
                measure(stack, repo, processes=count, slots=slots, jobs=jobs, limit_s=limit_s)
            )
        finally:
            stack.stop()
        r = results[-1]
        say(f"scaling {count} x {slots}: {r.live}/{jobs} live in {r.seconds:.1f} s")
    return results


def scaling_table(results: list[ScaleResult]) -> tuple[list[str], list[Goal]]:
    """The table, and one goal: >= 90% of ideal for every configuration before the
    first saturated one (the first configuration always counts)."""
    head = f"{'processes x slots':<19}{'jobs':>6}{'jobs/s':>9}{'ideal':>8}{'of ideal':>10}  "
    lines = [
        head + f"{'CPU busy':>9}{'valkey':>8}{'moto':>7}{'deployers':>10}{'ms CPU/job':>12}"
        f"{'own':>6}{'builds':>8}  saturated"
    ]
    for r in results:
        lines.append(
            f"{f'{r.processes} x {r.slots}':<19}{r.jobs:>6}{r.rate_per_s:>9.1f}"
            f"{r.ideal_per_s:>8.0f}{r.of_ideal:>10.0%}  {r.machine_busy:>9.0%}"
            f"{r.valkey_cores:>8.0%}{r.moto_cores:>7.0%}{r.deployer_cores:>10.0%}"
            f"{r.cpu_ms_per_job:>12.0f}{r.own_ms_per_job:>6.0f}{r.builds_ms_per_job:>8.0f}  "
            f"{r.saturated or '-'}{'' if r.done else '  (time limit: not all jobs ended)'}"
        )
    if not results:
        return lines, []
    # Every configuration before the first saturated one must reach the goal; when
    # the first configuration already saturates, it is the one that counts.
    counted: list[ScaleResult] = []
    for r in results:
        if r.saturated:
            counted = counted or [r]
            break
        counted.append(r)
    worst = min(r.of_ideal for r in counted)
    first_saturated = next((r for r in results if r.saturated), None)
    where = (
        f"saturates at {first_saturated.processes} x {first_saturated.slots}: "
        f"{first_saturated.saturated}"
        if first_saturated
        else "nothing saturated"
    )
    lines.append(f"goal counts {len(counted)} configuration(s); {where}")
    return lines, [Goal("scaling.of_ideal", worst, GOAL_OF_IDEAL, at_most=False)]
