"""Shared pieces of the fault-injection tests."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync

from shared.redis.keys import Keys
from tests.integration.helpers import TERMINAL, Stack, make_repo

# Fast clocks so faults are noticed in seconds, not the production 15 s.
FAST = {
    "BUILDQ_HEARTBEAT_INTERVAL_S": "0.5",
    "BUILDQ_WORKER_STALE_S": "2",
    "BUILDQ_RETRY_BASE_S": "0.3",
    "BUILDQ_RETRY_CAP_S": "2",
    "BUILDQ_MAX_ATTEMPTS": "6",
    "BUILDQ_GRACE_PERIOD_S": "20",
}

MARK = "EXECUTION-MARK"


def build_repo(path: Path, sleep_s: float = 0.2) -> Path:
    """A repository whose build prints one marker line per execution, then sleeps."""
    command = (
        f"echo {MARK} $BUILDQ_JOB_ID; sleep {sleep_s}; mkdir -p out; "
        "echo $BUILDQ_JOB_ID > out/index.html"
    )
    return make_repo(path, {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'})


def redis_client(env: dict[str, str]) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(env["BUILDQ_REDIS_URL"], decode_responses=True)


def wait_all_ended(
    client: redis_sync.Redis,
    keys: Keys,
    ids: Iterable[str],
    timeout_s: float,
    stack: Stack | None = None,
) -> dict[str, dict[str, str]]:
    """Every job's record once all have ended; fails with the stragglers otherwise."""
    ids = list(ids)
    deadline = time.monotonic() + timeout_s
    records: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        try:
            records = {i: client.hgetall(keys.job(i)) for i in ids}
        except redis_sync.ConnectionError:
            time.sleep(0.2)
            continue
        if all(r.get("status") in TERMINAL for r in records.values()):
            return records
        if stack is not None:
            for proc in stack.procs:
                assert proc.poll() is None, f"a daemon exited: {proc.args} -> {proc.returncode}"
        time.sleep(0.2)
    pending = {i: r.get("status") for i, r in records.items() if r.get("status") not in TERMINAL}
    raise AssertionError(f"{len(pending)} jobs did not end within {timeout_s}s: {pending}")


def executions(client: redis_sync.Redis, keys: Keys, job_id: str) -> int:
    """How many times the job's build started (marker lines in its log)."""
    entries = client.xrange(keys.logs(job_id), "-", "+")
    return sum(1 for _, e in entries if e.get("kind") == "line" and e["text"].startswith(MARK))


def submit_many(stack: Stack, repo: Path, count: int, services: int) -> list[str]:
    ids = []
    with httpx.Client(timeout=30) as http:
        for n in range(count):
            body = {"repo_url": f"file://{repo}", "service": f"svc-{n % services}"}
            response = http.post(f"{stack.url}/deployments", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


def newest_per_service(records: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    newest: dict[str, dict[str, str]] = {}
    for record in records.values():
        best = newest.get(record["service"])
        if best is None or int(record["seq"]) > int(best["seq"]):
            newest[record["service"]] = record
    return newest


def summary(name: str, **figures: Any) -> str:
    """One line of figures for the report (printed; run pytest with -s to see it)."""
    text = f"[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(text)
    return text


def median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
