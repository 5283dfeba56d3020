"""Time in one place: the injectable clock, epoch milliseconds, and how a time reads."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]


def now_ms(clock: Clock = time.time) -> int:
    """Milliseconds since the epoch from ``clock``."""
    return int(clock() * 1000)


def format_ms(ms: int | None, *, utc: bool = False, never: str = "no expiry") -> str:
    """An epoch-milliseconds time for people: local time to the second on a terminal,
    or UTC to the minute (``utc=True``) where readers are in many zones (chat)."""
    if ms is None:
        return never
    if utc:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
