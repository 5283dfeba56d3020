"""Submissions per identity per minute, counted in Redis so the limit holds across
uploader replicas (``BUILDQ_SUBMIT_RATE_PER_MIN``; 0 turns it off)."""

from __future__ import annotations

import math
import time

from uploader.state import Services

WINDOW_MS = 60_000


async def submission_wait_s(svc: Services, identity: str, *, now_s: float | None = None) -> int:
    """Count one submission by ``identity``; 0 when allowed, else seconds to wait.

    A fixed one-minute window; Redis errors propagate (the caller answers 503)."""
    limit = svc.settings.submit_rate_per_min
    if limit <= 0:
        return 0
    now = int((time.time() if now_s is None else now_s) * 1000)
    window = now // WINDOW_MS
    key = svc.keys.rate(identity, window)
    pipe = svc.redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.pexpire(key, WINDOW_MS * 2)
    count, _ = await pipe.execute()
    if int(count) <= limit:
        return 0
    return max(1, math.ceil(((window + 1) * WINDOW_MS - now) / 1000))
