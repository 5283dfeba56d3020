"""Many jobs at once through a stack's API: submit them in parallel, then follow their
statuses in Redis (one pipelined read per poll, instead of one HTTP GET per job)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from shared.redis.keys import Keys
from tests.bench.benchstack import ENDED, BenchError, BenchStack, post

SUBMIT_THREADS = 8
POLL_S = 0.05
NAMESPACE = "buildq"  # buildq up's default namespace


@dataclass(frozen=True)
class BatchResult:
    """How a batch ended: statuses, and the last ``ended_at`` (epoch ms)."""

    statuses: Counter[str]
    last_ended_ms: int
    done: bool

    @property
    def live(self) -> int:
        return self.statuses["live"]


def submit_many(stack: BenchStack, repo: Path, services: list[str]) -> list[str]:
    """POST one deployment of ``repo`` per service name; returns the job ids."""
    with (
        httpx.Client(timeout=60, limits=httpx.Limits(max_connections=SUBMIT_THREADS)) as client,
        ThreadPoolExecutor(SUBMIT_THREADS) as pool,
    ):
        return list(pool.map(lambda service: post(client, stack.api, repo, service), services))


def fleet(stack: BenchStack, *, paused: bool) -> None:
    response = httpx.put(f"{stack.api}/fleet", json={"paused": paused}, timeout=30)
    if response.status_code != 200:
        raise BenchError(f"PUT /fleet: {response.status_code} {response.text}")


class Watcher:
    """Reads job statuses straight from the stack's Redis."""

    def __init__(self, stack: BenchStack) -> None:
        self.redis = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        self.keys = Keys(NAMESPACE)

    def close(self) -> None:
        self.redis.close()

    def read(self, ids: list[str]) -> list[tuple[str, str]]:
        """(status, ended_at) of each job."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), "status", "ended_at")
        return [(s or "", e or "") for s, e in pipe.execute()]

    def errors(self, ids: list[str]) -> str:
        """The distinct errors of the failed jobs among ``ids``, most frequent first."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), "status", "error")
        found = Counter(e or "?" for s, e in pipe.execute() if s == "failed")
        return "; ".join(f"{count} x {error}" for error, count in found.most_common(3))

    def wait(self, ids: list[str], statuses: tuple[str, ...], timeout_s: float) -> BatchResult:
        """Wait until every job has one of ``statuses`` (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        pending = list(ids)
        seen: Counter[str] = Counter()
        last_ended = 0
        while pending and time.monotonic() < deadline:
            still = []
            for job_id, (status, ended_at) in zip(pending, self.read(pending), strict=True):
                if status in statuses:
                    seen[status] += 1
                    last_ended = max(last_ended, int(ended_at or 0))
                else:
                    still.append(job_id)
            pending = still
            if pending:
                time.sleep(POLL_S)
        if pending:
            seen.update(status for status, _ in self.read(pending))
        return BatchResult(seen, last_ended, not pending)

    def wait_ended(self, ids: list[str], timeout_s: float) -> BatchResult:
        return self.wait(ids, ENDED, timeout_s)
