"""kill -9 of a deployer mid-build under a real ``buildq up`` (production defaults:
2 s heartbeats, 15 s stale timeout): seconds until its job is ``building`` again, and
until its build command runs again.

Each round deploys a repository whose build prints a marker and sleeps, waits until
the build runs, SIGKILLs the deployer that runs it (found by its registered pid),
and polls Redis every 20 ms. ``buildq up`` restarts the deployer; the job comes back
through same-host recovery (the restarted deployer's first housekeeping round, or the
uploader's periodic one) and its deploy lock is released at once.

    .venv/bin/python -m tests.bench.bench_recovery [--rounds 5] [--deployers 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from shared.cli.stack import MAX_RESTARTS_PER_MIN
from shared.core.settings import load_settings
from shared.redis.keys import Keys
from tests.bench.benchstack import BenchError, post, raise_on_sigterm, start_stack, wait_ended
from tests.bench.goals import Goal
from tests.integration.helpers import make_repo

MARK = "BENCH-BUILD-RUNS"
BUILD_SLEEP_S = 2
POLL_S = 0.02
ROUND_TIMEOUT_S = 120
GOAL_S = 5.0
MIN_KILL_GAP_S = 60 / MAX_RESTARTS_PER_MIN + 0.5  # buildq up gives up on faster deaths


def sleepy_repo(path: Path) -> Path:
    command = f"echo {MARK}; sleep {BUILD_SLEEP_S}; mkdir -p out; echo ok > out/index.html"
    return make_repo(path, {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'})


def runs(client: redis.Redis, keys: Keys, job_id: str) -> int:
    """How many times the job's build command has started (marker lines in its log)."""
    entries = client.xrange(keys.logs(job_id), "-", "+")
    return sum(1 for _, e in entries if e.get("kind") == "line" and e.get("text") == MARK)


def wait_until(what: str, check: object, timeout_s: float = ROUND_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout_s}s")
        time.sleep(POLL_S)


def one_round(
    client: redis.Redis, keys: Keys, http: httpx.Client, api: str, *, repo: Path, n: int
) -> tuple[float, float]:
    """(kill -> building again, kill -> build command running again) in seconds."""
    job_id = post(http, api, repo, f"svc-{n}")
    wait_until("the first build", lambda: runs(client, keys, job_id) >= 1)
    worker = client.hget(keys.job(job_id), "worker")
    pid = int(client.hget(keys.worker(str(worker)), "pid") or 0)
    if pid <= 0:
        raise BenchError(f"worker {worker} of {job_id} registered no pid")
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)

    def building_again() -> bool:
        record = client.hgetall(keys.job(job_id))
        return record.get("status") == "building" and record.get("worker") != worker

    wait_until("building again", building_again)
    to_building = time.perf_counter() - killed
    wait_until("the second build", lambda: runs(client, keys, job_id) >= 2)
    to_running = time.perf_counter() - killed
    record = wait_ended(http, api, job_id)
    if record.get("status") != "live":
        raise BenchError(f"{job_id} ended {record.get('status')}: {record.get('error')}")
    return to_building, to_running


def spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f} s  "
        f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deployers", type=int, default=1, help="buildq up --deployers")
    args = parser.parse_args()
    raise_on_sigterm()
    keys = Keys(load_settings({}).namespace)
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        repo = sleepy_repo(Path(tmp) / "repo")
        stack = start_stack(Path(tmp) / "data", deployers=args.deployers)
        to_building: list[float] = []
        to_running: list[float] = []
        try:
            client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
            with httpx.Client(timeout=30) as http:
                last_kill = 0.0
                for n in range(args.rounds):
                    time.sleep(max(0.0, last_kill + MIN_KILL_GAP_S - time.monotonic()))
                    last_kill = time.monotonic()
                    building, running = one_round(client, keys, http, stack.api, repo=repo, n=n)
                    to_building.append(building)
                    to_running.append(running)
                    print(
                        f"round {n + 1}: building again {building:.2f} s, "
                        f"build running again {running:.2f} s",
                        flush=True,
                    )
        finally:
            stack.stop()
    print(f"kill -9 -> building again:      {spread(to_building)}")
    print(f"kill -9 -> build running again: {spread(to_running)}")
    print(Goal("kill9_to_building_s", statistics.median(to_building), GOAL_S).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
