"""Real front-end apps: build time and POST→live under ``buildq up``, against the same
``npm install && npm run build`` run bare on the host in the same run.

    .venv/bin/python -m tests.bench.bench_frontend [--rounds 3] [--templates vanilla,react-ts]

Needs npm and the npm registry. Each round creates nothing new: the templates are
made once (``npm create vite@latest``); every round deploys them again through the
whole stack (clone, S3, queue, sandboxed build with a fresh npm cache, publish,
promote) and, alternating, builds a fresh copy bare with an empty npm cache. Each
round deploys to a new service, so buildq's build cache starts empty too (its second
builds are bench_build_cache's). Prints medians with min-max, the ratio of buildq's
build phase to the bare build, the phase breakdown, and the platform overhead: POST→live
minus the work phases (cloning, uploading, building, publishing), as a share of
POST→live (issue 10's goal: at most 10%).
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

import httpx

from shared.cli.demo_repo import GIT_IDENTITY
from shared.cli.embedded import free_ports
from tests.bench.goals import Goal

LIMIT_S = 600  # per deployment
WORK_PHASES = ("cloning", "uploading", "building", "publishing")
OVERHEAD_GOAL = 0.10


def create_app(parent: Path, template: str) -> Path:
    name = f"vite-{template}"
    argv = ["npm", "create", "--yes", "vite@latest", name, "--", "--template", template]
    subprocess.run([*argv, "--no-interactive"], cwd=parent, check=True, capture_output=True)
    repo = parent / name
    env = {**os.environ, **GIT_IDENTITY}
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "x"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo


def bare_build(repo: Path, scratch: Path) -> float:
    """``npm install && npm run build`` on a fresh copy with an empty npm cache."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    shutil.copytree(repo, work / "app", ignore=shutil.ignore_patterns(".git"))
    env = {**os.environ, "HOME": str(work / "home"), "CI": "true"}
    started = time.monotonic()
    subprocess.run(
        "npm install && npm run build", shell=True, cwd=work / "app", env=env, check=True,
        capture_output=True, timeout=LIMIT_S,
    )  # fmt: skip
    took = time.monotonic() - started
    shutil.rmtree(work, ignore_errors=True)
    return took


def deploy(api: str, repo: Path, service: str) -> tuple[dict[str, float], float]:
    """(each phase's seconds, POST→live seconds) of one deployment."""
    started = time.monotonic()
    body = {"repo_url": f"file://{repo}", "service": service}
    job_id = httpx.post(f"{api}/deployments", json=body, timeout=30).json()["id"]
    deadline = started + LIMIT_S
    while time.monotonic() < deadline:
        record = httpx.get(f"{api}/deployments/{job_id}", timeout=30).json()
        if record["status"] in ("live", "failed", "cancelled", "superseded"):
            break
        time.sleep(0.05)
    took = time.monotonic() - started
    if record["status"] != "live":
        raise SystemExit(f"{service}: {record['status']}: {record.get('error')}")
    phases = {
        name: phase["duration_ms"] / 1000
        for name, phase in record["phases"].items()
        if phase.get("duration_ms") is not None
    }
    return phases, took


def start_stack(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, sites_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDQ_", "AWS_"))}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("buildq")), "up", "--port", str(port), "--sites-port",
         str(sites_port), "--data-dir", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"buildq is up"):
            return proc, f"http://127.0.0.1:{port}"
    raise SystemExit("buildq up did not start")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--templates", default="vanilla,react-ts")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-frontend-"))
    proc, api = start_stack(scratch / "data")
    try:
        repos = {t: create_app(scratch, t) for t in args.templates.split(",")}
        results: dict[str, dict[str, list[float]]] = {
            t: {"bare": [], "build": [], "live": [], "overhead": []}
            | {phase: [] for phase in WORK_PHASES}
            for t in repos
        }
        for round_no in range(args.rounds):
            for template, repo in repos.items():
                first = ("bare", "buildq") if round_no % 2 == 0 else ("buildq", "bare")
                for which in first:
                    if which == "bare":
                        results[template]["bare"].append(bare_build(repo, scratch))
                    else:
                        phases, live = deploy(api, repo, f"vite-{template}-{round_no}")
                        results[template]["build"].append(phases["building"])
                        results[template]["live"].append(live)
                        for phase in WORK_PHASES:
                            results[template][phase].append(phases.get(phase, 0.0))
                        work = sum(phases.get(phase, 0.0) for phase in WORK_PHASES)
                        results[template]["overhead"].append((live - work) / live)
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)
        print(f"\n{'app':<16}{'bare npm build':<28}{'buildq building phase':<28}"
              f"{'buildq POST→live':<28}build ratio")  # fmt: skip
        for template, r in results.items():
            ratios = [b / a for a, b in zip(r["bare"], r["build"], strict=True)]
            print(
                f"vite {template:<11}{spread(r['bare']):<28}{spread(r['build']):<28}"
                f"{spread(r['live']):<28}{statistics.median(ratios):.2f}x"
            )
        print(f"\n{'phases (median s)':<18}" + "".join(f"{p:<12}" for p in WORK_PHASES)
              + "overhead of POST→live (min-max)")  # fmt: skip
        goals = []
        for template, r in results.items():
            share = r["overhead"]
            print(
                f"vite {template:<13}"
                + "".join(f"{statistics.median(r[p]):<12.2f}" for p in WORK_PHASES)
                + f"{statistics.median(share):.1%} ({min(share):.1%}-{max(share):.1%})"
            )
            name = f"frontend.platform_overhead_{template.replace('-', '_')}"
            goals.append(Goal(name, statistics.median(share), OVERHEAD_GOAL))
        for goal in goals:
            print(goal.line())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
