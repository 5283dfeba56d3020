"""Dispatch rate, Redis commands per job and pickup latency: buildq against SAQ and arq.

One run starts one valkey-server on loopback (no persistence), measures every system
against it in turn, prints the tables and stops the server by its PID. Every phase is
bounded in count and time. See tests/bench/README.md for how to read the output.

    .venv/bin/python -m tests.bench.bench_queue [--jobs 5000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from shared.cli.embedded import free_port, start_valkey, stop_process
from shared.core.logsetup import configure_logging
from shared.redis import client

if __package__ in (None, ""):  # run as a file: make the `tests.bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.goals import Goal
from tests.bench.systems import Arq, Buildq, Floor, Probe, Saq, System

T = TypeVar("T")

# --------------------------------------------------------------------------- counters


class ClientCounter:
    """Commands packed and writes sent by every redis-py asyncio connection here.

    A write is one request on the wire (a single command or a whole pipeline), so
    writes per job is the number of round trips a job costs its worker.
    """

    commands = 0
    writes = 0

    @classmethod
    def install(cls) -> None:
        pack = AbstractConnection.pack_command
        send = AbstractConnection.send_packed_command
        pack_fast = client.pack_command  # buildq's own packer (shared.redis.client)

        def counting_pack(self: AbstractConnection, *args: Any) -> list[bytes]:
            cls.commands += 1
            return pack(self, *args)

        def counting_pack_fast(*args: Any) -> bytes:
            cls.commands += 1
            return pack_fast(*args)

        client.pack_command = counting_pack_fast

        async def counting_send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            cls.writes += 1
            await send(self, *args, **kwargs)

        AbstractConnection.pack_command = counting_pack  # type: ignore[method-assign]
        AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]

    @classmethod
    def read(cls) -> tuple[int, int]:
        return cls.commands, cls.writes


@dataclass
class Snapshot:
    """Server-side counters (INFO commandstats + cpu) and client-side counters."""

    calls: dict[str, int]
    server_cpu_s: float
    client_cmds: int
    client_writes: int
    worker_cpu_s: float

    @classmethod
    async def take(cls, stats: Redis) -> Snapshot:
        client_cmds, client_writes = ClientCounter.read()
        worker_cpu_s = time.process_time()
        info = await stats.info("commandstats", "cpu")
        calls = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in info.items()
            if k.startswith("cmdstat_")
        }
        server_cpu_s = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return cls(calls, server_cpu_s, client_cmds, client_writes, worker_cpu_s)


@dataclass
class Cost:
    """Per-job cost between two snapshots."""

    server_cmds: float
    client_cmds: float
    writes: float
    server_cpu_us: float
    worker_cpu_us: float
    breakdown: str

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, jobs: int) -> Cost:
        delta = {k: v - before.calls.get(k, 0) for k, v in after.calls.items()}
        delta["info"] = delta.get("info", 0) - 1  # the INFO that took `before`
        delta = {k: v for k, v in delta.items() if v > 0}
        per = max(jobs, 1)
        top = sorted(delta.items(), key=lambda kv: -kv[1])
        breakdown = " ".join(f"{k}={v / per:.2f}" for k, v in top if v / per >= 0.005)
        # The client counter saw the INFO that took `before` as well.
        client_cmds = after.client_cmds - before.client_cmds - 1
        writes = after.client_writes - before.client_writes - 1
        return cls(
            server_cmds=sum(delta.values()) / per,
            client_cmds=client_cmds / per,
            writes=writes / per,
            server_cpu_us=(after.server_cpu_s - before.server_cpu_s) * 1e6 / per,
            worker_cpu_us=(after.worker_cpu_s - before.worker_cpu_s) * 1e6 / per,
            breakdown=breakdown,
        )


# --------------------------------------------------------------------------- phases


@dataclass
class DrainResult:
    label: str
    jobs: int
    done: int = 0
    seconds: float = 0.0
    aborted: str = ""
    cost: Cost | None = None
    enqueue_rate: float = 0.0
    enqueue_cost: Cost | None = None

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PickupResult:
    label: str
    samples: list[float] = field(default_factory=list)
    aborted: str = ""

    def pct(self, p: float) -> float:
        """The ``p``-th percentile in milliseconds (nearest rank)."""
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def drain(system: System, stats: Redis, jobs: int, limit_s: float) -> DrainResult:
    """Pre-load ``jobs`` jobs, then time one worker draining them (start-up included)."""
    result = DrainResult(system.label, jobs)
    gc.collect()
    before = await Snapshot.take(stats)
    started = time.perf_counter()
    enqueued = 0
    for _ in range(jobs):
        if time.perf_counter() - started > limit_s:
            result.aborted = f"enqueue stopped at {limit_s:g} s"
            break
        await system.prepare_one()
        await system.enqueue()
        enqueued += 1
    result.enqueue_rate = enqueued / (time.perf_counter() - started)
    result.enqueue_cost = Cost.between(before, await Snapshot.take(stats), enqueued)
    result.jobs = enqueued

    gc.collect()
    probe = Probe(enqueued)
    before = await Snapshot.take(stats)
    started = time.perf_counter()
    await system.start_worker(probe)
    try:
        await asyncio.wait_for(probe.done.wait(), limit_s)
    except TimeoutError:
        result.aborted = f"aborted after {limit_s:g} s"
    result.seconds = time.perf_counter() - started
    result.done = probe.finished
    result.cost = Cost.between(before, await Snapshot.take(stats), probe.finished)
    await system.stop_worker()
    return result


async def pickup(system: System, samples: int, warmup: int, limit_s: float) -> PickupResult:
    """Enqueue one job at a time into an idle worker; time enqueue call -> handler start."""
    result = PickupResult(system.label)
    probe = Probe(target=sys.maxsize)
    await system.start_worker(probe)
    await asyncio.sleep(0.3)  # every slot connected and blocked (or polling)
    deadline = time.perf_counter() + limit_s
    try:
        for i in range(warmup + samples):
            if time.perf_counter() > deadline:
                result.aborted = f"stopped at {limit_s:g} s"
                break
            await system.prepare_one()
            await asyncio.sleep(random.uniform(0, system.arrival_jitter_s))
            probe.job_ended.clear()
            enqueued_at = time.perf_counter()
            await system.enqueue()
            await asyncio.wait_for(probe.job_ended.wait(), 5 + 2 * system.arrival_jitter_s)
            if i >= warmup:
                result.samples.append(probe.started_at - enqueued_at)
    except TimeoutError:
        result.aborted = "a job was not picked up within its timeout"
    finally:
        await system.stop_worker()
    return result


# --------------------------------------------------------------------------- report


def buildq_commit() -> str:
    """The commit of the checkout under test, marked when shared/ has local changes."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "shared"],
            cwd=repo,
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = head.stdout.decode().strip() or "unknown"
    return commit + (" + uncommitted changes in shared/" if dirty.stdout.strip() else "")


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def median_round(rounds: list[DrainResult]) -> DrainResult:
    """The round with the median rate (the lower middle one for an even count)."""
    ordered = sorted(rounds, key=lambda d: d.rate)
    return ordered[(len(ordered) - 1) // 2]


def print_dispatch(drains: dict[str, list[DrainResult]]) -> dict[str, DrainResult]:
    """Print the dispatch tables; returns each system's median round."""
    best = {label: median_round(rounds) for label, rounds in drains.items()}
    print("1. Dispatch: pre-loaded no-op jobs drained by one worker process (median round)")
    cols = (
        f"{'system':<20} {'jobs':>5} {'secs':>6} {'jobs/s':>7} {'srv cmd/job':>11} "
        f"{'sent cmd/job':>12} {'rtt/job':>7} {'srv cpu us/job':>14} {'wkr cpu us/job':>14}"
        "  jobs/s per round"
    )
    print(cols)
    print("-" * len(cols))
    for label, d in best.items():
        c = d.cost
        assert c is not None
        rounds = ", ".join(f"{r.rate:.0f}{'*' if r.aborted else ''}" for r in drains[label])
        print(
            f"{label:<20} {d.done:>5} {d.seconds:>6.2f} {d.rate:>7.0f} {c.server_cmds:>11.2f} "
            f"{c.client_cmds:>12.2f} {c.writes:>7.2f} {c.server_cpu_us:>14.1f} "
            f"{c.worker_cpu_us:>14.1f}  {rounds}{'  ' + d.aborted if d.aborted else ''}"
        )
    print()
    print("   server commands per job in that round (INFO commandstats, incl. calls inside Lua):")
    for label, d in best.items():
        assert d.cost is not None
        print(f"   {label:<20} {d.cost.breakdown}")
    print()
    print("   enqueue (one producer, sequential, before the drain; not part of dispatch):")
    for label, d in best.items():
        e = d.enqueue_cost
        assert e is not None
        print(
            f"   {label:<20} {d.enqueue_rate:>7.0f} jobs/s  srv cmd/job {e.server_cmds:5.2f}  "
            f"sent cmd/job {e.client_cmds:5.2f}  rtt/job {e.writes:4.2f}"
        )
    return best


def merge_pickups(rounds: list[list[PickupResult]]) -> list[PickupResult]:
    """Each system's samples of every round, in one result."""
    merged: dict[str, PickupResult] = {}
    for results in rounds:
        for r in results:
            into = merged.setdefault(r.label, PickupResult(r.label))
            into.samples.extend(r.samples)
            into.aborted = into.aborted or r.aborted
    return list(merged.values())


def round_ratios(rounds: list[list[PickupResult]], label: str, p: float) -> list[float]:
    """Per round: ``label``'s p-th percentile over the floor's in the same round."""
    out = []
    for results in rounds:
        by = {r.label: r for r in results if r.samples}
        if label in by and Floor.label in by:
            out.append(by[label].pct(p) / by[Floor.label].pct(p))
    return out


def print_pickup(pickups: list[PickupResult]) -> None:
    print("2. Pickup: enqueue call -> handler start, idle worker, producer on its own connection")
    print("   (all rounds' samples together)")
    cols = (
        f"{'system':<20} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'mean ms':>8}"
    )
    print(cols)
    print("-" * len(cols))
    for p in pickups:
        if not p.samples:
            print(f"{p.label:<20} {0:>4}  no samples {p.aborted}")
            continue
        print(
            f"{p.label:<20} {len(p.samples):>4} {p.pct(50):>8.3f} {p.pct(90):>8.3f} "
            f"{p.pct(99):>8.3f} {max(p.samples) * 1000:>8.3f} "
            f"{statistics.fmean(p.samples) * 1000:>8.3f}{'  ' + p.aborted if p.aborted else ''}"
        )


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def print_targets(
    drains: dict[str, list[DrainResult]], pickup_rounds: list[list[PickupResult]]
) -> list[Goal]:
    """Issue 10's goals as ratios to references measured in the same rounds."""
    print("3. Against the goals (ratios per round, same round's reference; median and spread)")
    goals: list[Goal] = []
    ours = drains.get(Buildq.label, [])
    for ref, name, target in ((Saq.label, "saq", 4.0), (Floor.label, "floor", 0.5)):
        theirs = drains.get(ref, [])
        ratios = [o.rate / t.rate for o, t in zip(ours, theirs, strict=False) if t.rate]
        if ratios:
            print(f"   dispatch buildq / {name}: {spread(ratios)}  (goal >= {target:g}x)")
            goals.append(
                Goal(f"queue.dispatch_vs_{name}", statistics.median(ratios), target, False)
            )
    for p, target in ((50, 1.5), (99, 3.0)):
        ratios = round_ratios(pickup_rounds, Buildq.label, p)
        if ratios:
            print(f"   pickup p{p} buildq / floor: {spread(ratios)}  (goal <= {target:g}x)")
            goals.append(Goal(f"queue.pickup_p{p}_vs_floor", statistics.median(ratios), target))
    if not goals:
        print("   (needs buildq and the floor or saq)")
    for goal in goals:
        print(goal.line())
    return goals


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per system and round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds (medians are shown)"
    )
    parser.add_argument("--concurrency", type=int, default=10, help="slots per worker")
    parser.add_argument("--samples", type=int, default=300, help="pickup samples per system")
    parser.add_argument("--warmup", type=int, default=20, help="pickup samples discarded")
    parser.add_argument("--limit-s", type=float, default=60, help="cap per system and phase")
    parser.add_argument(
        "--arq-poll-delays",
        default="0.5,0.05",
        help="arq poll_delay values to run, comma-separated (0.5 is arq's default)",
    )
    parser.add_argument("--arq-samples", type=int, default=40, help="pickup samples per arq run")
    parser.add_argument("--only", default="", help="run only these: floor,buildq,saq,arq")
    return parser.parse_args(argv)


def make_systems(args: argparse.Namespace, port: int, token: str) -> list[System]:
    url = f"redis://127.0.0.1:{port}/0"
    wanted = set(args.only.split(",")) if args.only else {"floor", "buildq", "saq", "arq"}
    systems: list[System] = [
        Floor(url, token, args.concurrency),
        Buildq(url, token, args.concurrency),
        Saq(url, token, args.concurrency),
    ]
    systems += [
        Arq(port, token, args.concurrency, float(delay), samples=args.arq_samples)
        for delay in args.arq_poll_delays.split(",")
        if delay and "arq" in wanted
    ]
    return [s for s in systems if s.label.split(" ")[0] in wanted]


async def run_systems(systems: list[System], phase: Callable[[System], Awaitable[T]]) -> list[T]:
    """Open every producer, run ``phase`` on each system in turn, close them all."""
    out: list[T] = []
    try:
        for system in systems:
            await system.open()
        for system in systems:
            out.append(await phase(system))
    finally:
        for system in systems:
            with contextlib.suppress(Exception):
                await system.close()
    return out


async def bench(args: argparse.Namespace, port: int) -> None:
    token = f"{os.getpid()}-{os.urandom(3).hex()}"
    stats = Redis.from_url(f"redis://127.0.0.1:{port}/0", single_connection_client=True)
    load_before = os.getloadavg()
    began = time.perf_counter()
    drains: dict[str, list[DrainResult]] = {}
    try:
        server = await stats.info("server")
        pickup_rounds: list[list[PickupResult]] = []
        per_round = max(20, args.samples // args.rounds)
        for round_no in range(args.rounds):
            # Alternate the order so that no system always runs on a warmer machine.
            order = 1 if round_no % 2 == 0 else -1
            systems = make_systems(args, port, f"{token}-d{round_no}")[::order]
            for d in await run_systems(systems, lambda s: drain(s, stats, args.jobs, args.limit_s)):
                drains.setdefault(d.label, []).append(d)
            systems = make_systems(args, port, f"{token}-p{round_no}")[::order]
            pickup_rounds.append(
                await run_systems(
                    systems,
                    lambda s: pickup(s, s.pickup_samples or per_round, args.warmup, args.limit_s),
                )
            )
        pickups = merge_pickups(pickup_rounds)
    finally:
        await stats.aclose()
    load_after = os.getloadavg()
    print(
        f"buildq queue benchmark, namespace prefix bench-{token}, "
        f"took {time.perf_counter() - began:.0f} s"
    )
    print(
        f"server: valkey {server.get('valkey_version', server.get('redis_version'))} on "
        f"127.0.0.1:{port}, appendonly no, save ''; {os.cpu_count()} CPUs, "
        f"1-min loadavg {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"client: Python {platform.python_version()} asyncio (no uvloop), "
        f"redis-py {dist_version('redis')}, hiredis {dist_version('hiredis')}, "
        f"saq {dist_version('saq')}, arq {dist_version('arq')}; buildq at {buildq_commit()}"
    )
    print(
        f"workload: {args.jobs} no-op jobs x {args.rounds} rounds per system, "
        f"{args.concurrency} slots per worker; pickup {args.samples} samples "
        f"(+{args.warmup} warm-up; arq {args.arq_samples})"
    )
    print()
    print_dispatch(drains)
    print()
    print_pickup(pickups)
    print()
    print_targets(drains, pickup_rounds)
    print()
    print("Notes:")
    for system in systems:
        print(f" - {system.label}: {system.note}")
    for note in NOTES:
        print(f" - {note}")


NOTES = (
    "srv cmd/job: INFO commandstats delta over the drain, every command including those a "
    "Lua script runs (an EVALSHA counts 1 plus its redis.call()s); sent cmd/job: commands "
    "redis-py packed in this process; rtt/job: requests written (a pipeline is one).",
    "cpu us/job: valkey's used_cpu_user+sys, and this (worker) process's CPU time.",
    "buildq's slots share writes: the end-and-take calls of slots that end jobs while "
    "another batch is on the wire go out together (shared/engine/batching.py, two "
    "connections), so its rtt/job is below 1; each call is still one take.lua run.",
    "a drain includes worker start-up (connections, registration) and its upkeep polls; "
    "'*' marks an aborted round.",
    "pickup: the producer's enqueue call starts the clock; the clock stops where the job "
    "function would run (buildq: in the handler, after the take.lua call pipelined behind "
    "BLMOVE started the job and returned its record).",
)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("warning", json=False)
    # saq warns on every stop that its blocked BLMOVE tasks had to be cancelled.
    logging.getLogger("saq").setLevel(logging.ERROR)
    ClientCounter.install()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="buildq-bench-") as tmp:
        port = free_port()
        server = start_valkey(Path(tmp) / "valkey", port, appendonly=False)
        try:
            asyncio.run(bench(args, port))
        finally:
            stop_process(server)


if __name__ == "__main__":
    main()
