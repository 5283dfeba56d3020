"""Fixed-window rate limits counted in Redis, so a limit holds across uploader
replicas: submissions per identity per minute (``BUILDQ_SUBMIT_RATE_PER_MIN``; 0 turns
it off), and dashboard login attempts per client (``uploader/login.py``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from uploader.state import Services

WINDOW_MS = 60_000


async def window_wait_s(
    svc: Services, key_of: Callable[[int], str], limit: int, now_s: float | None = None
) -> int:
    """Count one event in the current one-minute window (its key is ``key_of(window)``);
    0 when at most ``limit`` happened in it, else the seconds until the next window.
    Redis errors propagate (the caller answers 503)."""
    now = int((time.time() if now_s is None else now_s) * 1000)
    window = now // WINDOW_MS
    key = key_of(window)
    pipe = svc.redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.pexpire(key, WINDOW_MS * 2)
    count, _ = await pipe.execute()
    if int(count) <= limit:
        return 0
    return max(1, math.ceil(((window + 1) * WINDOW_MS - now) / 1000))


async def submission_wait_s(svc: Services, identity: str, *, now_s: float | None = None) -> int:
    """Count one submission by ``identity``; 0 when allowed, else seconds to wait."""
    limit = svc.settings.submit_rate_per_min
    if limit <= 0:
        return 0
    return await window_wait_s(svc, lambda window: svc.keys.rate(identity, window), limit, now_s)
