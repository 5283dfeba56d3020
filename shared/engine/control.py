"""The control channel: cancel notices, fleet changes and freed permits, by pub/sub."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("control")

RECONNECT_S = 1.0

Notice = Callable[[dict[str, Any]], Awaitable[None]]


def parse_notice(data: Any) -> dict[str, Any] | None:
    """A control message as a dict with a ``type``, or None if it is not one."""
    try:
        notice = json.loads(data)
    except (TypeError, ValueError):
        return None
    return notice if isinstance(notice, dict) and "type" in notice else None


async def follow_control(connect: Callable[[], Redis], channel: str, on_notice: Notice) -> None:
    """Call ``on_notice`` for every control message, reconnecting after outages."""
    while True:
        conn = connect()
        pubsub: Any = conn.pubsub()
        try:
            await conn.ping()  # connected, and on a cluster its slot map known, first
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                notice = (
                    parse_notice(message.get("data")) if message.get("type") == "message" else None
                )
                if notice is not None:
                    await on_notice(notice)
        except RedisError as exc:
            log.warning("control.lost", error=str(exc))
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()
                await conn.aclose()
        await anyio.sleep(RECONNECT_S)
