"""Following ``{ns}:events`` for good, from the uploaders' shared place in it: the
loop behind commit statuses (``uploader/statuses.py``) and build durations
(``uploader/durations.py``).

A feed keeps the id of the last entry the uploaders handled in its cursor key (a
string). A starting uploader reads on from there, so whatever happened while no
uploader ran is handled late rather than never, unless the stream (capped at
``BUILDQ_EVENTS_MAX_ENTRIES``) was trimmed past the cursor meanwhile, which is logged.
With no cursor yet a feed starts at the newest entry, and keeps that as the cursor
even before it handles anything. Every uploader handles every
entry: handlers must be idempotent, and a cursor set back a little by a slower
uploader only repeats entries. Redis outages are retried, never fatal; a follower
the hub drops as too slow follows again from its last entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from uploader.events import latest_id, trimmed_past
from uploader.loghub import LogHub, StreamEntry

log = structlog.get_logger("feed")
RETRY_S = 1.0

Handler = Callable[[StreamEntry], Awaitable[None]]


async def follow_feed(
    hub: LogHub,
    redis: Redis,
    *,
    name: str,
    cursor: str,
    handle: Handler,
    started: anyio.Event | None = None,
) -> None:
    """Call ``handle`` on every events entry from the cursor on, until cancelled;
    ``started`` is set once the starting point is known."""
    after: str | None = None
    while True:
        try:
            if after is None:
                after = await resume_point(redis, hub.keys.events, cursor, name)
                if started is not None:
                    started.set()
            after = await _follow(hub, redis, after, cursor, handle)
        except RedisError as exc:
            log.warning("feed.redis_error", feed=name, error=str(exc))
            await anyio.sleep(RETRY_S)


async def resume_point(redis: Redis, events: str, cursor: str, name: str) -> str:
    """Where to read on from: the cursor, else the newest entry (which becomes the
    cursor, unless another uploader set one meanwhile: then that one)."""
    at = await redis.get(cursor)
    if at is None:
        newest = await latest_id(redis, events)
        if await redis.set(cursor, newest, nx=True):
            return newest
        at = await redis.get(cursor)
        return newest if at is None else str(at)
    if await trimmed_past(redis, events, str(at)):
        log.warning(
            "feed.events_trimmed",
            feed=name,
            after=str(at),
            why="no uploader ran while more events happened than the stream keeps: "
            "what happened then is not handled",
        )
    return str(at)


async def _follow(hub: LogHub, redis: Redis, after: str, cursor: str, handle: Handler) -> str:
    """Handle entries after ``after`` until the hub drops us; the last id handled."""
    subscription = await hub.follow_events(after, internal=True)
    try:
        while True:
            try:
                batch = await subscription.receive()
            except anyio.EndOfStream:
                return after  # dropped as too slow: follow again from here
            for entry in batch:
                await handle(entry)
                after = entry.id
            if batch:
                await redis.set(cursor, after)
    finally:
        subscription.close()
