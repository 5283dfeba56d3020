"""The build cache: a real Vite app's first build of a service against its second,
under ``buildq up``.

    .venv/bin/python -m tests.bench.bench_build_cache [--rounds 3] [--template react-ts]
        [--lockfile]

Needs npm and the npm registry. The app is made once (``npm create vite@latest``);
each round deploys it to a new service twice: the first build starts with an empty
npm cache and no node_modules and saves the service's cache, the second restores it.
Both times are the job's ``building`` phase as buildq records it (source fetch,
cache restore, ``npm install && npm run build``, cache save). Prints the medians
and the median ratio second/first, and the goal (issue 13: at most 0.3x).
``--lockfile`` commits a ``package-lock.json`` first, as most real repositories do:
buildq then runs ``npm ci``, which deletes ``node_modules``, so only npm's own cache
is kept between builds (its goal line is named ``..._npm_ci``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from shared.cli.demo_repo import GIT_IDENTITY
from tests.bench.bench_frontend import LIMIT_S, create_app, spread, start_stack
from tests.bench.goals import Goal

GOAL_RATIO = 0.3


def build(api: str, repo: Path, service: str) -> tuple[float, list[str]]:
    """One deployment: its building phase in seconds and its log's build-cache lines."""
    body = {"repo_url": f"file://{repo}", "service": service}
    job_id = httpx.post(f"{api}/deployments", json=body, timeout=30).json()["id"]
    deadline = time.monotonic() + LIMIT_S
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = httpx.get(f"{api}/deployments/{job_id}", timeout=30).json()
        if record["status"] in ("live", "failed", "cancelled", "superseded"):
            break
        time.sleep(0.05)
    if record.get("status") != "live":
        raise SystemExit(f"{service}: {record.get('status')}: {record.get('error')}")
    log = httpx.get(f"{api}/deployments/{job_id}/logs", timeout=30).text
    lines = [line for line in log.splitlines() if "build cache" in line]
    return record["phases"]["building"]["duration_ms"] / 1000, lines


def add_lockfile(repo: Path) -> None:
    """Commit the ``package-lock.json`` npm resolves for the app (nothing installed)."""
    subprocess.run(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"],
                   cwd=repo, check=True, capture_output=True, timeout=LIMIT_S)  # fmt: skip
    env = {**os.environ, **GIT_IDENTITY}
    for cmd in (["git", "add", "package-lock.json"], ["git", "commit", "-qm", "lockfile"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--template", default="react-ts")
    parser.add_argument("--lockfile", action="store_true", help="commit a package-lock.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-build-cache-"))
    proc, api = start_stack(scratch / "data")
    first: list[float] = []
    second: list[float] = []
    try:
        repo = create_app(scratch, args.template)
        if args.lockfile:
            add_lockfile(repo)
        for round_no in range(args.rounds):
            service = f"cache-bench-{round_no}"
            cold, _ = build(api, repo, service)
            warm, lines = build(api, repo, service)
            if not any("restored build cache" in line for line in lines):
                raise SystemExit(f"{service}: the second build did not restore a cache: {lines}")
            first.append(cold)
            second.append(warm)
            print(f"round {round_no + 1}/{args.rounds}: first {cold:.2f} s, second {warm:.2f} s",
                  flush=True)  # fmt: skip
            for line in lines:
                print(f"  second: {line}", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = [b / a for a, b in zip(first, second, strict=True)]
    ratio = statistics.median(ratios)
    print(f"\n{'app':<18}{'first build':<28}{'second build':<28}second/first")
    print(f"vite {args.template:<13}{spread(first):<28}{spread(second):<28}{ratio:.2f}x")
    suffix = "_npm_ci" if args.lockfile else ""
    print(Goal(f"build_cache_second_build_ratio{suffix}", ratio, GOAL_RATIO).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
