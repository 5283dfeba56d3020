"""Lock handoff latency and uncontended acquire+release rate: buildq's DeployLock
against redis-py's asyncio ``Lock`` and ``python-redis-lock``, on one fresh valkey-server.

Handoff: this process holds the lock; a waiter in a child process blocks on it; this
process releases. The sample is the time from the start of the release call here to
the moment the child's acquire returned (both read CLOCK_MONOTONIC, which is system-wide
on Linux). Rate: acquire+release pairs in a loop, one client, no contention.

    .venv/bin/python -m tests.bench.bench_locks [--samples 300] [--ops 3000] [--limit-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType

import redis
from redis.asyncio import Redis

from shared.cli.embedded import free_port, start_valkey, stop_process
from shared.coord.locks import DeployLock, Lease
from shared.core.logsetup import configure_logging
from shared.core.settings import load_settings
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from tests.bench.goals import Goal

SETTLE_S = 0.002  # after the waiter was told to start, before the release
EXPIRE_S = 60


def now_s() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


class System:
    """One lock library: acquire (blocking) and release of one named lock."""

    label = "?"
    poll_period_s = 0.0  # > 0: waiters poll; releases land at a random phase of it

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name

    async def acquire(self) -> None:
        raise NotImplementedError

    async def release(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close the client."""


class Buildq(System):
    label = "buildq DeployLock"

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, name)
        # The client the deployer gives its DeployLock (shared.redis.client.make_redis).
        self.redis = make_redis(load_settings(environ={}, redis_url=url))
        self.locks = DeployLock(self.redis, Keys(f"bench-{name}"), events_max=1000, owner="bench")
        self.lease: Lease | None = None

    async def acquire(self) -> None:
        self.lease = await self.locks.lock("svc", ttl_ms=EXPIRE_S * 1000)

    async def release(self) -> None:
        assert self.lease is not None
        await self.locks.release(self.lease)

    async def close(self) -> None:
        await self.locks.aclose()
        await self.redis.aclose()


class BuildqHolding(Buildq):
    """What a deployer does: ``holding(..., cancel_on_loss=True)`` around each deploy,
    inside ``DeployLock.running()`` (the deployer's shared watchdog)."""

    label = "buildq DeployLock.holding (deployer)"

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, name)
        self.stack = AsyncExitStack()
        self.held: AsyncExitStack | None = None

    async def acquire(self) -> None:
        if not self.locks.serving:
            await self.stack.enter_async_context(self.locks.running())
        held = AsyncExitStack()
        await held.enter_async_context(
            self.locks.holding("svc", ttl_ms=EXPIRE_S * 1000, cancel_on_loss=True)
        )
        self.held = held

    async def release(self) -> None:
        assert self.held is not None
        await self.held.aclose()

    async def close(self) -> None:
        await self.stack.aclose()
        await super().close()


class RedisPy(System):
    label = f"redis-py {dist_version('redis')} asyncio Lock"
    poll_period_s = 0.1  # Lock(sleep=0.1), its default

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, name)
        self.redis = Redis.from_url(url)
        self.lock = self.redis.lock(f"bench-{name}:redispy", timeout=EXPIRE_S)

    async def acquire(self) -> None:
        assert await self.lock.acquire()

    async def release(self) -> None:
        await self.lock.release()

    async def close(self) -> None:
        await self.redis.aclose()


class PythonRedisLock(System):
    label = f"python-redis-lock {dist_version('python-redis-lock')} (sync)"

    def __init__(self, url: str, name: str) -> None:
        import redis_lock

        super().__init__(url, name)
        self.redis = redis.Redis.from_url(url)
        self.lock = redis_lock.Lock(self.redis, f"bench-{name}:prl", expire=EXPIRE_S)

    async def acquire(self) -> None:
        assert self.lock.acquire()

    async def release(self) -> None:
        self.lock.release()

    async def close(self) -> None:
        self.redis.close()


SYSTEMS: dict[str, type[System]] = {
    "buildq": Buildq,
    "buildq-holding": BuildqHolding,
    "python-redis-lock": PythonRedisLock,
    "redis-py": RedisPy,
}


@dataclass
class Result:
    label: str
    handoff_ms: list[float]
    rate: float
    ops: int

    def pct(self, p: float) -> float:
        ordered = sorted(self.handoff_ms)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def waiter(kind: str, url: str, name: str) -> None:
    """Child process: on each line from stdin, block on the lock, print when it is ours."""
    system = SYSTEMS[kind](url, name)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
        await system.acquire()
        acquired = now_s()
        await system.release()
        print(f"{acquired!r}", flush=True)
    await system.close()


def start_waiter(system: System, kind: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.bench.bench_locks", "--waiter", kind]
    return subprocess.Popen(
        [*argv, system.url, system.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


async def handoff(system: System, kind: str, samples: int, limit_s: float) -> list[float]:
    child = start_waiter(system, kind)
    assert child.stdin is not None
    assert child.stdout is not None
    loop = asyncio.get_running_loop()
    out: list[float] = []
    try:
        assert (await loop.run_in_executor(None, child.stdout.readline)).strip() == "ready"
        deadline = now_s() + limit_s
        for index in range(samples + 20):
            await system.acquire()
            child.stdin.write("go\n")
            child.stdin.flush()
            # Let the waiter block; a polling waiter is released at a random phase.
            await asyncio.sleep(SETTLE_S + random.uniform(0, system.poll_period_s or 0.005))
            started = now_s()
            await system.release()
            acquired = float(await loop.run_in_executor(None, child.stdout.readline))
            if index >= 20:  # warm-up: connections, script cache
                out.append((acquired - started) * 1000)
            if now_s() > deadline:
                break
        child.stdin.write("stop\n")
        child.stdin.flush()
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out


async def rate(system: System, ops: int, limit_s: float) -> tuple[float, int]:
    for _ in range(50):
        await system.acquire()
        await system.release()
    done = 0
    began = now_s()
    deadline = began + limit_s
    while done < ops and now_s() < deadline:
        await system.acquire()
        await system.release()
        done += 1
    return done / (now_s() - began), done


async def bench(args: argparse.Namespace, url: str, order: int = 1) -> list[Result]:
    results = []
    for kind in args.only.split(",")[::order]:
        name = f"{os.getpid()}-{os.urandom(3).hex()}-{kind}"
        system = SYSTEMS[kind](url, name)
        try:
            samples = await handoff(system, kind, args.samples, args.limit_s)
            ops_rate, ops = await rate(system, args.ops, args.limit_s)
        finally:
            await system.close()
        results.append(Result(system.label, samples, ops_rate, ops))
    return results


def merge(rounds: list[list[Result]]) -> list[Result]:
    """Each system's handoff samples of every round together, and its median rate."""
    by: dict[str, list[Result]] = {}
    for results in rounds:
        for r in results:
            by.setdefault(r.label, []).append(r)
    return [
        Result(
            label,
            [ms for r in rs for ms in r.handoff_ms],
            statistics.median(r.rate for r in rs),
            sum(r.ops for r in rs),
        )
        for label, rs in by.items()
    ]


def goals(rounds: list[list[Result]]) -> list[Goal]:
    """Issue 10's lock goals, as ratios to the peer measured in the same round."""

    def p50(o: Result, t: Result) -> float:
        return o.pct(0.5) / t.pct(0.5)

    def p99(o: Result, t: Result) -> float:
        return o.pct(0.99) / t.pct(0.99)

    def ops(o: Result, t: Result) -> float:
        return o.rate / t.rate

    picks = (
        ("handoff_p50_vs_python_redis_lock", PythonRedisLock.label, p50, 1.0, True),
        ("handoff_p99_vs_python_redis_lock", PythonRedisLock.label, p99, 1.0, True),
        ("acquire_release_vs_redis_py", RedisPy.label, ops, 0.9, False),
    )
    # The lock API itself, and the path a deployer takes (holding, shared watchdog).
    ours = ((Buildq.label, "locks."), (BuildqHolding.label, "locks.holding_"))
    out = []
    for label, prefix in ours:
        for name, peer, ratio, target, at_most in picks:
            values = []
            for results in rounds:
                by = {r.label: r for r in results}
                if label in by and peer in by and by[peer].handoff_ms:
                    values.append(ratio(by[label], by[peer]))
            if values:
                print(
                    f"  {prefix}{name}: median {statistics.median(values):.2f} "
                    f"(min {min(values):.2f}, max {max(values):.2f}) over {len(values)} rounds"
                )
                out.append(Goal(f"{prefix}{name}", statistics.median(values), target, at_most))
    for goal in out:
        print(goal.line())
    return out


def report(results: list[Result], args: argparse.Namespace, began: float) -> None:
    print(f"buildq lock benchmark, took {now_s() - began:.0f} s")
    print(
        f"server: fresh valkey-server on 127.0.0.1, appendonly no; {os.cpu_count()} CPUs, "
        f"1-min loadavg {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"client: Python {platform.python_version()} asyncio, redis-py "
        f"{dist_version('redis')}, hiredis {dist_version('hiredis')}; waiter in a child process"
    )
    print()
    print(f"{'system':<40} {'handoff p50':>12} {'p99':>9} {'n':>5} {'acq+rel/s':>10} {'n':>6}")
    for r in results:
        print(
            f"{r.label:<40} {r.pct(0.5):>9.3f} ms {r.pct(0.99):>6.3f} ms {len(r.handoff_ms):>5}"
            f" {r.rate:>10,.0f} {r.ops:>6}"
        )
    for ours in (r for r in results if r.label in (Buildq.label, BuildqHolding.label)):
        print()
        print(f"ratios, peer / {ours.label} (above 1: buildq is better):")
        for r in results:
            if r.label in (Buildq.label, BuildqHolding.label):
                continue
            print(
                f"  {r.label:<38} handoff p50 {r.pct(0.5) / ours.pct(0.5):7.2f}x   "
                f"p99 {r.pct(0.99) / ours.pct(0.99):7.2f}x   "
                f"acquire+release/s {ours.rate / r.rate:5.2f}x"
            )
    print()
    print("Notes:")
    print(
        " - handoff: from the start of the holder's release call to the return of the "
        "blocked waiter's acquire (other process); redis-py's Lock polls every 0.1 s, so "
        "its releases land at a random phase of that period."
    )
    print(
        " - buildq's acquire also INCRs the fence, keeps the history record and appends "
        "to the events stream in the same Lua call; its release hands the lock to the "
        "oldest waiter in line (or publishes the release) in the same call."
    )
    print(
        " - the holding variant is the deployer's path: DeployLock.holding(..., "
        "cancel_on_loss=True) inside DeployLock.running(), whose one shared watchdog "
        "renews every hold."
    )
    print(
        " - buildq's variants use the client the deployer uses (make_redis: a bounded "
        "pool, commands packed by hiredis); the peers use their library's default client."
    )
    print(
        " - waiters of both variants keep their pub/sub connection between waits; it is "
        "unsubscribed off the waiter's path (by running()'s task, else by the next release)."
    )
    print(f" - {args.samples} handoff samples after 20 warm-up; {args.ops} rate ops after 50.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="handoff samples per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--ops", type=int, default=1000, help="acquire+release pairs per round")
    parser.add_argument("--limit-s", type=float, default=60.0, help="cap per phase")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma list of systems")
    parser.add_argument("--waiter", nargs=3, metavar=("KIND", "URL", "NAME"), help="internal")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("warning", json=False)
    if args.waiter:
        asyncio.run(waiter(*args.waiter))
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    began = now_s()
    with tempfile.TemporaryDirectory(prefix="buildq-bench-") as tmp:
        port = free_port()
        server = start_valkey(Path(tmp) / "valkey", port, appendonly=False)
        url = f"redis://127.0.0.1:{port}/0"
        rounds: list[list[Result]] = []
        try:
            for round_no in range(args.rounds):  # alternating order, medians of rounds
                rounds.append(asyncio.run(bench(args, url, 1 if round_no % 2 == 0 else -1)))
        finally:
            stop_process(server)
    report(merge(rounds), args, began)
    print()
    print("goals (buildq / peer in the same round):")
    goals(rounds)


if __name__ == "__main__":
    main()
