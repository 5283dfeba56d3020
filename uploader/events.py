"""``GET /events``: the ``{ns}:events`` stream (job, lock, claim and site changes) as
Server-Sent Events, for the dashboard.

Every client is a follower of the process's one stream reader (``uploader/loghub.py``).
A client starts where it says: the ``Last-Event-ID`` header (an ``EventSource``
reconnecting), else ``?after=<id>`` (the id the dashboard page was rendered at, so
nothing between the render and the connection is missed), else now. When the stream
has been trimmed past that point (it is capped at ``BUILDQ_EVENTS_MAX_ENTRIES``), the
client first gets a ``reset`` event: what it shows may be stale, reload.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from redis.asyncio import Redis

from shared.engine.logs import entry_key
from uploader.api import Svc
from uploader.loghub import HubFull, StreamEntry, Subscription

router = APIRouter()
ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # ASCII: \d matches any Unicode digit
KEEPALIVE_S = 15.0
CATCH_UP_BATCH = 1000
RECONNECT_MS = 1000


def start_from(last_event_id: str | None, after: str | None) -> str | None:
    """The cursor a client asked for: Last-Event-ID first, then ``after``; None: now."""
    for candidate in (last_event_id, after):
        if candidate and ENTRY_ID.fullmatch(candidate.strip()):
            return candidate.strip()
    return None


def sse_event(entry: StreamEntry) -> str:
    """One entry as an SSE event named by its ``kind``, its fields as JSON data."""
    kind = re.sub(r"[^a-z_]", "", entry.fields.get("kind", "")) or "event"
    data = json.dumps(entry.fields, separators=(",", ":"))
    return f"id: {entry.id}\nevent: {kind}\ndata: {data}\n\n"


async def latest_id(redis: Redis, key: str) -> str:
    """The id of the stream's newest entry (``0-0`` when empty)."""
    rows: Any = await redis.xrevrange(key, "+", "-", count=1)
    return str(rows[0][0]) if rows else "0-0"


async def trimmed_past(redis: Redis, key: str, after: str) -> bool:
    """Whether entries after ``after`` may be gone: the stream's oldest entry is newer
    than ``after``, so ``after`` itself (and maybe more) was trimmed."""
    if entry_key(after) == (0, 0):
        return False
    rows: Any = await redis.xrange(key, "-", "+", count=1)
    return bool(rows) and entry_key(str(rows[0][0])) > entry_key(after)


async def read_after(redis: Redis, key: str, after: str) -> list[StreamEntry]:
    """Up to a batch of entries after ``after``, from Redis."""
    rows: Any = await redis.xrange(key, "(" + after, "+", count=CATCH_UP_BATCH)
    return [StreamEntry(str(i), {str(k): str(v) for k, v in f.items()}) for i, f in rows]


@router.get("/events", response_model=None)
async def events(
    request: Request,
    svc: Svc,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64, pattern=r"^\d+-\d+$")] = None,
) -> StreamingResponse:
    """Job, lock, claim and site changes as Server-Sent Events, resumable with
    ``Last-Event-ID`` (or ``?after=<id>``)."""
    hub = svc.logs
    if hub is None:
        raise HTTPException(503, "event streaming is not running in this process")
    key = svc.keys.events
    start = start_from(last_event_id, after) or await latest_id(svc.redis, key)
    try:
        subscription = await hub.follow_events(start)
    except HubFull as exc:
        raise HTTPException(503, f"{exc}; retry later", {"Retry-After": "5"}) from None

    async def stream() -> AsyncIterator[str]:
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            if await trimmed_past(svc.redis, key, start):
                yield "event: reset\ndata: {}\n\n"
            async for event in follow(svc.redis, key, subscription, start, request):
                yield event
        finally:
            subscription.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def follow(
    redis: Redis,
    key: str,
    updates: Subscription[StreamEntry],
    after: str,
    request: Request,
) -> AsyncIterator[str]:
    """Catch up from Redis, then what the hub hands us, each id once and in order,
    until the client goes away (or the hub drops it: it resumes with Last-Event-ID)."""
    last = entry_key(after)
    catch_up = True
    while not await request.is_disconnected():
        # Redis is read at the start, while a catch-up batch comes back full, and after
        # an idle tick; otherwise entries come from the hub alone.
        batch = await read_after(redis, key, after) if catch_up else []
        catch_up = len(batch) == CATCH_UP_BATCH
        if not batch:
            with anyio.move_on_after(KEEPALIVE_S):
                try:
                    batch = await updates.receive()
                except anyio.EndOfStream:
                    return
        if not batch:
            catch_up = True
            yield ": keep-alive\n\n"
            continue
        for entry in batch:
            if entry_key(entry.id) <= last:
                continue
            last, after = entry_key(entry.id), entry.id
            yield sse_event(entry)
