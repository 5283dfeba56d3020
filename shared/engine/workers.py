"""The worker registry: who is alive, with what, as of which heartbeat."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis

from shared import __version__
from shared.core.clock import Clock, now_ms
from shared.core.host import ProcessRef, this_process
from shared.redis.keys import Keys

HEARTBEAT_INTERVAL_S = 2.0


def new_worker_id(kind: str) -> str:
    """``<kind>-<host>-<pid>-<random>``: unique across restarts and machines."""
    host = socket.gethostname().split(".")[0][:32] or "host"
    return f"{kind}-{host}-{os.getpid()}-{os.urandom(2).hex()}"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One registered worker as the status endpoint shows it."""

    id: str
    kind: str
    host: str
    pid: int
    version: str
    slots: int
    busy: int
    started_at: int
    heartbeat_age_ms: int


class Registry:
    """Registers one worker and keeps its heartbeat."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        worker_id: str,
        *,
        kind: str,
        slots: int,
        queue: str,
        clock: Clock = time.time,
        process: ProcessRef | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.clock = clock
        self.process = process  # None: this process, read at the first beat
        self.info: dict[str, Any] = {
            "kind": kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "slots": slots,
            "busy": 0,
            "queue": queue,
            "started_at": now_ms(clock),
        }

    async def beat(self, busy: int) -> None:
        """Record that this worker is alive and how many slots are busy."""
        if self.process is None:
            self.process = await anyio.to_thread.run_sync(this_process)
        if "pid_start" not in self.info:
            self.info.update(process_fields(self.process))
        pipe = self.redis.pipeline(transaction=False)
        mapping: Any = {**self.info, "busy": busy}
        pipe.hset(self.keys.worker(self.worker_id), mapping=mapping)
        pipe.zadd(self.keys.workers, {self.worker_id: now_ms(self.clock)})
        await pipe.execute()

    async def unregister(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.workers, self.worker_id)
        pipe.delete(self.keys.worker(self.worker_id))
        await pipe.execute()


def process_fields(process: ProcessRef) -> dict[str, str | int]:
    """The registry fields that let a worker of the same host tell whether this one's
    process has ended (see :func:`shared.engine.recovery.recover_same_host_workers`)."""
    host = process.host
    return {
        "host_id": host.host_id,
        "boot_id": host.boot_id,
        "pid_ns": host.pid_ns,
        "pid": process.pid,
        "pid_start": process.started,
    }


async def list_workers(redis: Redis, keys: Keys, clock: Clock = time.time) -> list[WorkerInfo]:
    """Every registered worker with its heartbeat age, oldest heartbeat first."""
    beats: Any = await redis.zrange(keys.workers, 0, -1, withscores=True)
    if not beats:
        return []
    pipe = redis.pipeline(transaction=False)
    for worker_id, _ in beats:
        pipe.hgetall(keys.worker(worker_id))
    now = now_ms(clock)
    out: list[WorkerInfo] = []
    for (worker_id, beat), info in zip(beats, await pipe.execute(), strict=True):
        out.append(
            WorkerInfo(
                id=worker_id,
                kind=info.get("kind", "?"),
                host=info.get("host", "?"),
                pid=int(info.get("pid", 0)),
                version=info.get("version", "?"),
                slots=int(info.get("slots", 0)),
                busy=int(info.get("busy", 0)),
                started_at=int(info.get("started_at", 0)),
                heartbeat_age_ms=max(0, now - int(beat)),
            )
        )
    return out
