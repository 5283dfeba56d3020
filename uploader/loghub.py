"""One Redis reader for every followed stream in this process: build logs and events.

``GET /deployments/{id}/logs`` with ``Accept: text/event-stream`` used to hold a
blocking Redis connection per open stream: 300 idle browsers meant 300 Redis clients.
:class:`LogHub` runs a single ``XREAD BLOCK`` over every stream some client follows
(the log streams of followed jobs, and ``{ns}:events`` for the dashboard's
``GET /events`` and the build-duration recorder) and hands new entries to each
follower through a bounded in-memory channel. A new follower wakes the blocked read
(``CLIENT UNBLOCK``) so its stream joins at once; a batch read from a cursor past a
follower's (it joined during that read) is left to the next read, so no follower
ever skips an entry. A follower that does not keep up is dropped (its client reconnects
with ``Last-Event-ID``); past ``BUILDQ_MAX_LOG_STREAMS`` followers, new ones are
refused (503).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.engine.logs import LogEntry, decode_entry, entry_key
from shared.redis.keys import Keys

log = structlog.get_logger("loghub")
CLUSTER_BLOCK_MS = 200  # on a Redis Cluster: how soon a new follower is read
BLOCK_MS = 5000
BATCH = 1000
FOLLOWER_BUFFER = 64  # batches a follower may lag behind before it is dropped
RETRY_S = 1.0


T = TypeVar("T")


class HubFull(Exception):
    """Too many followers in this process."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry as read: its id and its fields."""

    id: str
    fields: dict[str, str]


@dataclass(eq=False)
class _Follower:
    key: str  # the stream followed
    after: tuple[int, int]
    send: MemoryObjectSendStream[list[StreamEntry]]
    internal: bool = False  # this process's own: not counted against the cap


@dataclass(eq=False)
class Subscription(Generic[T]):
    """One follower's end of the hub: ``receive()`` batches, then ``close()``."""

    hub: LogHub
    follower: _Follower
    updates: MemoryObjectReceiveStream[list[StreamEntry]]
    decode: Callable[[StreamEntry], T]

    async def receive(self) -> list[T]:
        """The next batch; EndOfStream once the hub dropped this follower."""
        return [self.decode(entry) for entry in await self.updates.receive()]

    def close(self) -> None:
        self.hub._leave(self.follower)
        self.updates.close()


@dataclass
class LogHub:
    """Fans one blocking reader out to every follower of every followed stream."""

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
        """Clients following a stream (this process's own followers not counted)."""
        return sum(not f.internal for group in self.followers.values() for f in group)

    async def follow(self, job_id: str, after: str) -> Subscription[LogEntry]:
        """Entries of ``job_id``'s log after ``after`` as they arrive; HubFull if full.
        The caller closes the subscription."""
        return await self.subscribe(self.keys.logs(job_id), after, _log_entry)

    async def follow_events(
        self, after: str, *, internal: bool = False
    ) -> Subscription[StreamEntry]:
        """Entries of ``{ns}:events`` after ``after``; ``internal`` followers (this
        process's own, not a client's) do not count against the cap."""
        return await self.subscribe(self.keys.events, after, _as_is, internal=internal)

    async def subscribe(
        self,
        key: str,
        after: str,
        decode: Callable[[StreamEntry], T],
        *,
        internal: bool = False,
    ) -> Subscription[T]:
        """Entries of stream ``key`` after ``after``, each through ``decode``."""
        if not internal and self.count >= self.max_followers:
            raise HubFull(f"{self.max_followers} streams are followed in this process")
        send, receive = anyio.create_memory_object_stream[list[StreamEntry]](FOLLOWER_BUFFER)
        follower = _Follower(key, entry_key(after), send, internal)
        self.followers.setdefault(key, set()).add(follower)
        await self._wake()
        return Subscription(self, follower, receive, decode)

    def _leave(self, follower: _Follower) -> None:
        group = self.followers.get(follower.key, set())
        group.discard(follower)
        if not group:
            self.followers.pop(follower.key, None)
        follower.send.close()

    async def _wake(self) -> None:
        """Make the reader start over with the current set of streams."""
        self.changed.set()
        if self.reader_id is not None:
            with contextlib.suppress(RedisError):
                await self.redis.execute_command("CLIENT", "UNBLOCK", self.reader_id)

    def _cursors(self) -> dict[str, str]:
        cursors = {}
        for key, group in self.followers.items():
            ms, seq = min(f.after for f in group)
            cursors[key] = f"{ms}-{seq}"
        return cursors

    def _dispatch(self, key: str, entries: list[StreamEntry], since: str) -> None:
        read_from = entry_key(since)
        for follower in list(self.followers.get(key, ())):
            if follower.after < read_from:
                continue  # joined behind this read: the next read starts at its cursor
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
                if isinstance(reader, Redis):
                    self.reader_id = int(await reader.client_id())
                else:
                    # A cluster client has no one connection to unblock: poll the
                    # follower set every CLUSTER_BLOCK_MS instead.
                    self.block_ms = min(self.block_ms, CLUSTER_BLOCK_MS)
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
            for key, rows in reply or []:
                name = str(key)
                self._dispatch(name, [_entry(i, f) for i, f in rows], cursors.get(name, "0"))


def _entry(entry_id: Any, fields: dict[Any, Any]) -> StreamEntry:
    return StreamEntry(str(entry_id), {str(k): str(v) for k, v in fields.items()})


def _log_entry(entry: StreamEntry) -> LogEntry:
    return decode_entry(entry.id, entry.fields)


def _as_is(entry: StreamEntry) -> StreamEntry:
    return entry
