"""Transfers and end to end: a real ~1,700-file tree deployed through ``buildq up``
against the seed's and the AWS CLI's transfers on the same moto server; scaling with
I/O-bound builds; memory. Ends with ``goals met: N of M`` and one ``GOAL`` line each.

    .venv/bin/python -m tests.bench.bench_transfer [--rounds 3] [--quick]

Needs git, npm the first time (the package tarball is then cached in
~/.cache/buildq-bench) and PyPI the first time (the AWS CLI goes into .bench/awscli).
See tests/bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a file: make the `tests.bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.benchstack import BenchError, raise_on_sigterm
from tests.bench.goals import Goal, summary
from tests.bench.memory import run_memory
from tests.bench.references import awscli_version, ensure_awscli
from tests.bench.scaling import run_scaling, scaling_table
from tests.bench.transfer import run_transfer, transfer_table
from tests.bench.trees import FULL_PACKAGE, QUICK_PACKAGE, package_tree, tiny_site

PARTS = ("transfer", "scaling", "memory")


def say(message: str) -> None:
    print(message, flush=True)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    ram_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return f"nproc {os.cpu_count()}, {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM"


def source_state() -> str:
    """The commit measured, and whether the working tree differs from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "shared", "deployer", "uploader"],
            cwd=root, capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "?"
    return f"{head}{' + uncommitted changes in shared/deployer/uploader' if dirty else ''}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="transfer rounds (median of)")
    parser.add_argument("--quick", action="store_true", help="small tree, few jobs: a smoke run")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--processes", default="1,2,4", help="deployer processes to scale over")
    parser.add_argument("--slots", type=int, default=16, help="slots per deployer when scaling")
    parser.add_argument("--jobs-per-slot", type=int, help="scaling jobs per slot [10; quick 2]")
    parser.add_argument("--memory-jobs", type=int, help="no-op jobs for RSS growth [5000; 300]")
    parser.add_argument("--queued", type=int, help="jobs queued for Redis bytes [10000; 1000]")
    parser.add_argument("--limit-s", type=float, default=1800, help="bound on any one batch")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    args.processes = tuple(int(p) for p in args.processes.split(","))
    if args.rounds < 1 or args.slots < 1 or min(args.processes) < 1:
        parser.error("--rounds, --slots and --processes must be at least 1")
    if args.jobs_per_slot is None:
        args.jobs_per_slot = 2 if args.quick else 10
    if args.memory_jobs is None:
        args.memory_jobs = 300 if args.quick else 5000
    if args.queued is None:
        args.queued = 1000 if args.quick else 10_000
    return args


def run(args: argparse.Namespace, scratch: Path) -> list[Goal]:
    goals: list[Goal] = []
    tables: list[tuple[str, list[str]]] = []
    package = QUICK_PACKAGE if args.quick else FULL_PACKAGE
    if "transfer" in args.parts:
        ensure_awscli(say)
        tree = package_tree(package, scratch / "tree", say)
        warmup = tiny_site(scratch / "warmup-site", "true")
        say(
            f"tree: {package}, {tree.files:,} files, {tree.bytes / 1e6:.1f} MB, committed "
            f"and packed (as a forge keeps a push); {awscli_version()}"
        )
        samples = run_transfer(tree, warmup, scratch, args.rounds, say)
        lines, found = transfer_table(samples)
        title = f"transfer: {package} ({tree.files:,} files, {tree.bytes / 1e6:.1f} MB), "
        tables.append((title + f"median of {args.rounds} rounds, same run", lines))
        goals += found
    if "scaling" in args.parts:
        sleeper = tiny_site(scratch / "sleep-site", "sleep 0.2")
        results = run_scaling(
            sleeper,
            scratch,
            processes=args.processes,
            slots=args.slots,
            jobs_per_slot=args.jobs_per_slot,
            limit_s=args.limit_s,
            say=say,
        )
        lines, found = scaling_table(results)
        tables.append(("scaling: builds that sleep 200 ms, queued then resumed", lines))
        goals += found
    if "memory" in args.parts:
        noop = tiny_site(scratch / "noop-site", "true")
        lines, found = run_memory(
            noop, scratch, jobs=args.memory_jobs, queued=args.queued, limit_s=args.limit_s, say=say
        )
        tables.append(("memory", lines))
        goals += found
    for title, lines in tables:
        say(f"\n## {title}\n")
        for line in lines:
            say(line)
    return goals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    load = os.getloadavg()
    say(f"bench_transfer {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    say(f"buildq {source_state()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    try:
        goals = run(args, scratch)
    except KeyboardInterrupt:
        say("interrupted: every process this run started has been stopped")
        return 130
    except (BenchError, httpx.HTTPError, subprocess.CalledProcessError) as exc:
        say(f"bench_transfer failed: {exc}")
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load = os.getloadavg()
    say(f"\ntook {time.monotonic() - started:.0f} s; load average after {load[0]:.2f}")
    for goal in goals:
        say(goal.line())
    say(summary(goals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
