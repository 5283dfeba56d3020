"""Fleet control: pause, and a fleet-wide cap on concurrent jobs via Redis permits.

``{ns}:fleet`` holds ``paused`` and ``max_concurrency``. Changes are published on
the control channel so workers react at once; each worker also re-reads the hash
every heartbeat, so a missed message costs at most one heartbeat period.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis

from shared.core.clock import Clock, now_ms
from shared.engine.replies import PERMIT, PermitReply
from shared.redis.keys import Keys
from shared.redis.scripts import Scripts


@dataclass(frozen=True, slots=True)
class FleetState:
    """The fleet-wide switches."""

    paused: bool = False
    max_concurrency: int | None = None


async def read_fleet(redis: Redis, keys: Keys) -> FleetState:
    raw: Any = await redis.hgetall(keys.fleet)
    limit = raw.get("max_concurrency")
    return FleetState(raw.get("paused") == "1", int(limit) if limit else None)


async def write_fleet(
    redis: Redis, keys: Keys, *, paused: bool | None = None, max_concurrency: int | None = -1
) -> FleetState:
    """Change the switches (``max_concurrency=None`` lifts the cap; -1 leaves it)."""
    pipe = redis.pipeline(transaction=True)
    if paused is not None:
        pipe.hset(keys.fleet, "paused", "1" if paused else "0")
    if max_concurrency is None:
        pipe.hdel(keys.fleet, "max_concurrency")
    elif max_concurrency >= 0:
        pipe.hset(keys.fleet, "max_concurrency", max_concurrency)
    pipe.publish(keys.control_channel, json.dumps({"type": "fleet"}))
    await pipe.execute()
    return await read_fleet(redis, keys)


class FleetGate:
    """Decides when a slot may claim: not while paused, and only with a permit
    while ``max_concurrency`` is set."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        enabled: bool,
        permit_ttl_ms: int,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.enabled = enabled
        self.permit_ttl_ms = permit_ttl_ms
        self.clock = clock
        self.state = FleetState()
        self.scripts = Scripts(redis)
        self.permits: set[str] = set()
        self._changed = anyio.Event()

    def wake(self) -> None:
        """Wake every slot waiting for its turn."""
        self._changed.set()
        self._changed = anyio.Event()

    async def refresh(self) -> bool:
        """Re-read the switches; True if slots must stop claiming now."""
        if not self.enabled:
            return False
        old, self.state = self.state, await read_fleet(self.redis, self.keys)
        if self.permits:
            pipe = self.redis.pipeline(transaction=False)
            expiry = now_ms(self.clock) + self.permit_ttl_ms
            for slot in self.permits:
                pipe.zadd(self.keys.permits, {slot: expiry}, xx=True)
            await pipe.execute()
        if old != self.state:
            self.wake()
        tightened = self.state.max_concurrency is not None and (
            old.max_concurrency is None or self.state.max_concurrency < old.max_concurrency
        )
        return (self.state.paused and not old.paused) or tightened

    async def wait_turn(self, slot: str, stopping: anyio.Event, wait_s: float) -> bool:
        """Block until ``slot`` may claim; False once ``stopping`` is set."""
        while not stopping.is_set():
            if not self.enabled:
                return True
            if self.state.paused:
                await self._wait(wait_s)
                continue
            if self.state.max_concurrency is None:
                if slot in self.permits:
                    await self.release(slot)
                return True
            if await self._acquire(slot, self.state.max_concurrency):
                return True
            await self._wait(wait_s)
        return False

    async def _acquire(self, slot: str, limit: int) -> bool:
        now = now_ms(self.clock)
        reply = await self.scripts.permit(
            keys=[self.keys.permits], args=[slot, now, now + self.permit_ttl_ms, limit]
        )
        if PERMIT(reply) is PermitReply.GRANTED:
            self.permits.add(slot)
            return True
        self.permits.discard(slot)
        return False

    async def release(self, slot: str) -> None:
        """Give back ``slot``'s permit and tell waiting slots fleet-wide."""
        if slot not in self.permits:
            return
        self.permits.discard(slot)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.permits, slot)
        pipe.publish(self.keys.control_channel, json.dumps({"type": "permit"}))
        await pipe.execute()

    async def _wait(self, wait_s: float) -> None:
        with anyio.move_on_after(wait_s):
            await self._changed.wait()
