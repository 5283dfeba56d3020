"""One Redis reader for every followed build log in this process.

``GET /deployments/{id}/logs`` with ``Accept: text/event-stream`` used to hold a
blocking Redis connection per open stream: 300 idle browsers meant 300 Redis clients.
:class:`LogHub` runs a single ``XREAD BLOCK`` over the log streams of every job some
client follows and hands new entries to each follower through a bounded in-memory
channel. A new follower wakes the blocked read (``CLIENT UNBLOCK``) so its stream
joins at once. A follower that does not keep up is dropped (its client reconnects
with ``Last-Event-ID``); past ``BUILDQ_MAX_LOG_STREAMS`` followers, new ones are
refused (503).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.engine.logs import LogEntry, decode_entry
from shared.redis.keys import Keys

log = structlog.get_logger("loghub")
BLOCK_MS = 5000
BATCH = 1000
FOLLOWER_BUFFER = 64  # batches a follower may lag behind before it is dropped
RETRY_S = 1.0


class HubFull(Exception):
    """Too many followers in this process."""


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (``"0"`` is the start)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class _Follower:
    job_id: str
    after: tuple[int, int]
    send: MemoryObjectSendStream[list[LogEntry]]


@dataclass(eq=False)
class Subscription:
    """One follower's end of the hub: ``receive()`` batches, then ``close()``."""

    hub: LogHub
    follower: _Follower
    updates: MemoryObjectReceiveStream[list[LogEntry]]

    async def receive(self) -> list[LogEntry]:
        """The next batch; EndOfStream once the hub dropped this follower."""
        return await self.updates.receive()

    def close(self) -> None:
        self.hub._leave(self.follower)
        self.updates.close()


@dataclass
class LogHub:
    """Fans one blocking reader out to every follower of every job log."""

    make_reader: Callable[[], Redis]  # a dedicated (single-connection) client
    redis: Redis  # the pooled client, for CLIENT UNBLOCK
    keys: Keys
    max_followers: int
    block_ms: int = BLOCK_MS
    followers: dict[str, set[_Follower]] = field(default_factory=dict)
    reader_id: int | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def count(self) -> int:
        return sum(len(group) for group in self.followers.values())

    async def follow(self, job_id: str, after: str) -> Subscription:
        """Entries of ``job_id``'s log after ``after`` as they arrive; HubFull if full.
        The caller closes the subscription."""
        if self.count >= self.max_followers:
            raise HubFull(f"{self.max_followers} log streams are open in this process")
        send, receive = anyio.create_memory_object_stream[list[LogEntry]](FOLLOWER_BUFFER)
        follower = _Follower(job_id, entry_key(after), send)
        self.followers.setdefault(job_id, set()).add(follower)
        await self._wake()
        return Subscription(self, follower, receive)

    def _leave(self, follower: _Follower) -> None:
        group = self.followers.get(follower.job_id, set())
        group.discard(follower)
        if not group:
            self.followers.pop(follower.job_id, None)
        follower.send.close()

    async def _wake(self) -> None:
        """Make the reader start over with the current set of streams."""
        self.changed.set()
        if self.reader_id is not None:
            with contextlib.suppress(RedisError):
                await self.redis.execute_command("CLIENT", "UNBLOCK", self.reader_id)

    def _cursors(self) -> dict[str, str]:
        cursors = {}
        for job_id, group in self.followers.items():
            ms, seq = min(f.after for f in group)
            cursors[self.keys.logs(job_id)] = f"{ms}-{seq}"
        return cursors

    def _dispatch(self, job_id: str, entries: list[LogEntry]) -> None:
        for follower in list(self.followers.get(job_id, ())):
            fresh = [e for e in entries if entry_key(e.id) > follower.after]
            if not fresh:
                continue
            try:
                follower.send.send_nowait(fresh)
                follower.after = entry_key(fresh[-1].id)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._leave(follower)  # too slow: its client reconnects from its last id

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read and fan out until cancelled; Redis outages are retried, never fatal."""
        task_status.started()
        while True:
            reader = self.make_reader()
            try:
                self.reader_id = int(await reader.client_id())
                await self._read(reader)
            except RedisError as exc:
                log.warning("loghub.redis_error", error=str(exc))
                self.reader_id = None
                await anyio.sleep(RETRY_S)
            finally:
                self.reader_id = None
                with anyio.CancelScope(shield=True):
                    await reader.aclose()

    async def _read(self, reader: Redis) -> None:
        while True:
            if not self.followers:
                await self.changed.wait()
            self.changed = anyio.Event()
            cursors = self._cursors()
            if not cursors:
                continue
            reply: Any = await reader.xread(cursors, count=BATCH, block=self.block_ms)
            prefix_len = len(self.keys.logs(""))
            for key, rows in reply or []:
                self._dispatch(key[prefix_len:], [decode_entry(i, f) for i, f in rows])
