"""Waiting for a deploy lock: attempts with a place in line, woken by pub/sub.

A waiter that may wait takes a place in line (one service) with its first attempt,
subscribes to the release channels of its services, and keeps its place with each
later attempt; a release hands the lock straight to the oldest live waiter and
publishes ``g:<token>:<fence>``, or publishes the service name when nobody is in
line. A hand-over before the subscription was confirmed is found by the attempt
that follows it. The pub/sub connection of a finished wait is kept for
the next one instead of a new connection per wait.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from shared.coord.lockbook import Lease, LockBook, LockRecord
from shared.coord.replies import AcquireReply
from shared.core.clock import now_ms

SUBSCRIBE_TIMEOUT_S = 10.0
MAX_IDLE_SUBSCRIPTIONS = 2  # kept pub/sub connections (pool slots); extra ones are closed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Attempt:
    """The tries of one lock call: one token, a place in line, and the hand-over."""

    def __init__(
        self,
        book: LockBook,
        names: tuple[str, ...],
        *,
        owner: str,
        ttl_ms: int,
        task: str,
        reason: str,
        monotonic: Callable[[], float],
    ) -> None:
        self.book = book
        self.names = names
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.task = task
        self.reason = reason
        self.monotonic = monotonic
        self.token = secrets.token_hex(16)
        self.granted = f"g:{self.token}:"
        self.queued = False
        self.done = False
        self.queued_at: float | None = None  # monotonic send time of the latest place in line

    async def run(self, queue_for_s: float = 0.0) -> tuple[Lease | None, LockRecord | None, int]:
        """One acquire call; with ``queue_for_s`` (one service) also keep a place in line."""
        queue = queue_for_s > 0 and len(self.names) == 1
        sent = self.monotonic()
        until_ms = now_ms(self.book.clock) + int(queue_for_s * 1000) if queue else 0
        got = await self.book.acquire(
            self.names,
            token=self.token,
            owner=self.owner,
            ttl_ms=self.ttl_ms,
            task=self.task,
            reason=self.reason,
            queue_until_ms=until_ms,
            own_record=False,
        )
        if got.reply is AcquireReply.TAKEN:
            return self._lease(got.fences, sent), None, 0
        if got.reply is AcquireReply.HANDED_OVER:
            # Handed over before this call, after our previous place in line was kept.
            return self._lease(got.fences, self.queued_at or sent), None, 0
        self.queued = self.queued or queue
        if queue:
            self.queued_at = sent
        return None, got.record, got.holder_ttl_ms

    def handed_over(self, data: Any) -> Lease | None:
        """The lease if a release message hands the lock to us."""
        text = _text(data)
        if not text.startswith(self.granted) or self.queued_at is None:
            return None
        return self._lease((int(text[len(self.granted) :]),), self.queued_at)

    def _lease(self, fences: Sequence[int], valid_from: float) -> Lease:
        self.done = True
        return Lease(
            services=self.names,
            token=self.token,
            fences=dict(zip(self.names, fences, strict=True)),
            owner=self.owner,
            task=self.task,
            ttl_ms=self.ttl_ms,
            valid_until=valid_from + self.ttl_ms / 1000,
            monotonic=self.monotonic,
        )


class Subscriptions:
    """Pub/sub connections for waiters, kept between waits (at most
    ``MAX_IDLE_SUBSCRIPTIONS``) instead of a connection opened and closed per wait.

    A finished wait's connection stays subscribed until it is tidied: by ``keep``
    (inside ``DeployLock.running()``) at once, otherwise by the next release or wait
    of the same ``DeployLock``; either way off the path from the hand-over to the
    new holder. Tidying sends UNSUBSCRIBE, whose confirmation the next wait reads.
    ``aclose`` closes the kept connections."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.keeping = False
        self._idle: list[PubSub] = []  # unsubscribed, ready for the next wait
        self._used: list[PubSub] = []  # still subscribed to a finished wait's channels
        self._tidy = anyio.Event()

    @property
    def untidy(self) -> bool:
        """True while a finished wait's connection is still subscribed."""
        return bool(self._used)

    @asynccontextmanager
    async def listening(self, channels: Sequence[str]) -> AsyncIterator[PubSub]:
        """A connection subscribed to ``channels`` (confirmed) for the block."""
        untidy = not self._idle and bool(self._used)
        kept = self._used if untidy else self._idle
        pubsub = kept.pop() if kept else self.redis.pubsub()
        try:
            if untidy:
                await pubsub.unsubscribe()
            await pubsub.subscribe(*channels)
            # A kept connection may still deliver its previous wait's unsubscribe
            # confirmation and late messages first: count only our confirmations.
            pending = set(channels)
            with anyio.fail_after(SUBSCRIBE_TIMEOUT_S):
                while pending:
                    msg = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                    if msg is not None and msg["type"] == "subscribe":
                        pending.discard(_text(msg["channel"]))
            yield pubsub
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _close(pubsub)
            raise
        if len(self._idle) + len(self._used) < MAX_IDLE_SUBSCRIPTIONS:
            self._used.append(pubsub)
            if self.keeping:
                self._tidy.set()
        else:
            with anyio.CancelScope(shield=True):
                await _close(pubsub)

    async def tidy(self) -> None:
        """Unsubscribe finished waits' connections, keeping them for the next wait (a
        connection that fails is closed)."""
        while self._used:
            pubsub = self._used.pop()
            try:
                await pubsub.unsubscribe()  # the next wait reads the confirmation
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await _close(pubsub)
                if isinstance(exc, RedisError):
                    continue  # the next wait opens a new connection
                raise
            self._idle.append(pubsub)

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tidy finished waits' connections as they come until cancelled, then close
        every kept connection."""
        self.keeping = True
        if self._used:  # left by waits before ``running()``
            self._tidy.set()
        task_status.started()
        try:
            while True:
                await self._tidy.wait()
                self._tidy = anyio.Event()
                await self.tidy()
        finally:
            self.keeping = False
            await self.aclose()

    async def aclose(self) -> None:
        """Close every kept connection."""
        with anyio.CancelScope(shield=True):
            while self._used or self._idle:
                await _close((self._used or self._idle).pop())


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


async def next_wakeup(
    pubsub: PubSub, attempt: Attempt, channels: Sequence[str], timeout_s: float
) -> Lease | None:
    """Sleep until a release of one of ``channels`` is published (None: try again) or
    hands the lock to ``attempt`` (its lease), or for ``timeout_s`` (None)."""
    wanted = set(channels)
    deadline = anyio.current_time() + timeout_s
    while (left_s := deadline - anyio.current_time()) > 0:
        # None also for a health-check reply: only the deadline ends the sleep.
        msg = await pubsub.get_message(timeout=left_s)
        if msg is not None and msg["type"] == "message" and _text(msg["channel"]) in wanted:
            return attempt.handed_over(msg["data"])
    return None
