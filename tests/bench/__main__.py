"""``python -m tests.bench``: run every benchmark in turn (each prints its own table),
collect the ``GOAL`` lines they print and end with ``goals met: N of M`` overall.

A benchmark that exits non-zero is named at the end (and the run exits 1); its goals
count as far as it printed them."""

from __future__ import annotations

import importlib
import subprocess
import sys

from tests.bench.goals import GoalResult, parse_goal, summary

BENCHMARKS = (
    "tests.bench.bench_queue",
    "tests.bench.bench_locks",
    "tests.bench.bench_frontend",
    "tests.bench.bench_build_cache",  # a real Vite app built twice per round: a few minutes
    "tests.bench.bench_rollback",
    "tests.bench.bench_transfer",
    "tests.bench.bench_recovery",  # about a minute: five kill -9 rounds under buildq up
)


def run_one(module: str) -> tuple[int, list[GoalResult]]:
    """Run ``module`` on its defaults, echoing its output; (exit status, its goals)."""
    goals: list[GoalResult] = []
    with subprocess.Popen(
        [sys.executable, "-m", module], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            goal = parse_goal(line)
            if goal is not None:
                goals.append(goal)
    return proc.returncode, goals


def main() -> int:
    results: dict[str, tuple[int, list[GoalResult]]] = {}
    try:
        for module in BENCHMARKS:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                print(f"skipping {module}: {exc}", flush=True)
                continue
            print(f"\n==> {module}", flush=True)
            results[module] = run_one(module)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    print("\n==> goals")
    every: list[GoalResult] = []
    for module, (code, goals) in results.items():
        state = "" if code == 0 else f"  (exited with status {code})"
        print(f"{module}: {summary(goals)}{state}")
        for goal in goals:
            print(f"  {'met   ' if goal.met else 'MISSED'} {goal.name} {goal.value} {goal.target}")
        every += goals
    print(summary(every), flush=True)
    return 1 if any(code != 0 for code, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
