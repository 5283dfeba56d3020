"""What a queue position costs the server: ``uploader/position.py``'s one MULTI (LLEN,
LPOS from the tail, LPOS from the head, both with MAXLEN) against reading the whole
list (LRANGE 0 -1) and finding the id in Python, on a real valkey-server.

    .venv/bin/python -m tests.bench.bench_position [--length 100000] [--reads 200]

Fills ``{bench}:queue`` with ``--length`` ids, then asks for the ids at positions 1,
100, 10,000 and the last, ``--reads`` times each, alternating the two methods, and
prints the server's own time per request (``INFO commandstats`` usec deltas, which a
busy shared machine disturbs less than wall time) and the client's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared.cli.embedded import free_port, start_valkey, stop_process, wait_for_port
from uploader.position import queue_position

KEY = "{bench}:queue"


async def server_usec(redis: Redis) -> float:
    stats: Any = await redis.info("commandstats")
    return sum(float(v["usec"]) for k, v in stats.items() if k != "cmdstat_info")


async def whole_list_position(redis: Redis, job_id: str) -> int | None:
    ids: Any = await redis.lrange(KEY, 0, -1)
    try:
        return len(ids) - ids.index(job_id)
    except ValueError:
        return None


async def run(port: int, length: int, reads: int) -> None:
    redis = Redis(port=port, decode_responses=True)
    await redis.delete(KEY)
    for start in range(0, length, 10_000):
        await redis.lpush(KEY, *(f"job{n:08d}" for n in range(start, min(length, start + 10_000))))
    print(f"queue of {length} ids; {reads} reads per position; server us and wall ms per read")
    for place in (1, 100, 10_000, length):
        if place > length:
            continue
        job_id = f"job{place - 1:08d}"
        assert await queue_position(redis, KEY, job_id) == place
        assert await whole_list_position(redis, job_id) == place
        totals = {"position.py": [0.0, 0.0], "LRANGE all": [0.0, 0.0]}
        for _ in range(reads):
            for name, method in (
                ("position.py", queue_position(redis, KEY, job_id)),
                ("LRANGE all", whole_list_position(redis, job_id)),
            ):
                before, started = await server_usec(redis), time.perf_counter()
                await method
                totals[name][1] += time.perf_counter() - started
                totals[name][0] += await server_usec(redis) - before
        row = "  ".join(
            f"{name} {usec / reads:9.1f} us {wall * 1000 / reads:8.3f} ms"
            for name, (usec, wall) in totals.items()
        )
        print(f"position {place:>7}: {row}")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-position-") as tmp:
        proc = start_valkey(Path(tmp), port, appendonly=False)
        try:
            wait_for_port(port, 30, proc)
            asyncio.run(run(port, args.length, args.reads))
        finally:
            stop_process(proc)


if __name__ == "__main__":
    main()
