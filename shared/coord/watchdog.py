"""The deploy lock's watchdog: one task renewing every watched lease at ttl/3.

A lease that could not be renewed (its lock is gone or carries another token), or
whose TTL may have run out before the renewal (a paused process), is lost: its
``lost`` event is set and the cancel scope given with it, if any, is cancelled.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskStatus
from redis.exceptions import RedisError

from shared.coord.lockbook import Lease

log = structlog.get_logger("locks")


@dataclass(slots=True)
class _Watch:
    due: float  # monotonic seconds of the next renewal; inf while one is under way
    on_loss: anyio.CancelScope | None


class Watchdog:
    """Renews watched leases from one task (``run``); ``watch`` costs a dict entry."""

    def __init__(
        self,
        extend: Callable[[Lease], Awaitable[bool]],
        *,
        idle_period_s: float,
        monotonic: Callable[[], float],
    ) -> None:
        self._extend = extend
        self._idle_period_s = idle_period_s
        self._monotonic = monotonic
        self._watched: dict[Lease, _Watch] = {}
        self._wake = anyio.Event()
        self._wake_at = math.inf  # when ``run`` wakes next by itself
        self.running = False

    def watch(self, lease: Lease, on_loss: anyio.CancelScope | None = None) -> None:
        """Renew ``lease`` every ttl/3 until ``unwatch``; on loss cancel ``on_loss``."""
        due = self._monotonic() + lease.ttl_ms / 3000
        self._watched[lease] = _Watch(due, on_loss)
        if due < self._wake_at:
            self._wake.set()

    def unwatch(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (a renewal under way still finishes)."""
        self._watched.pop(lease, None)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew due leases until cancelled; leases still watched then are lost."""
        self.running = True
        try:
            async with anyio.create_task_group() as renewals:
                task_status.started()
                while True:
                    now = self._monotonic()
                    for lease, watch in list(self._watched.items()):
                        if watch.due <= now:
                            watch.due = math.inf
                            renewals.start_soon(self._renew, lease, watch)
                    # Sleep until the next renewal is due; when nothing is watched, for
                    # one idle period, so that a lease with a ttl of at least three
                    # periods never has to wake this task.
                    dues = [w.due for w in self._watched.values()]
                    self._wake_at = min([now + self._idle_period_s, *dues])
                    with anyio.move_on_after(self._wake_at - now):
                        await self._wake.wait()
                    if self._wake.is_set():
                        self._wake = anyio.Event()
        finally:
            self.running = False
            self._wake_at = math.inf
            for lease, watch in self._watched.items():
                # Nobody renews these any more: they are no longer known to be held.
                log.warning("lock.watchdog_stopped", services=lease.services)
                self._lose(lease, watch)
            self._watched.clear()

    async def _renew(self, lease: Lease, watch: _Watch) -> None:
        if self._watched.get(lease) is not watch or lease.released:
            return
        if self._monotonic() >= lease.valid_until:
            lease.lost.set()  # paused past the TTL: someone else may hold it now
        else:
            try:
                await self._extend(lease)  # sets ``lost`` when the lock is no longer ours
            except RedisError as exc:
                log.warning("lock.extend_failed", services=lease.services, error=str(exc))
        if lease.is_lost():
            log.warning("lock.lost", services=lease.services, fence=lease.fences)
            if self._watched.get(lease) is watch:
                del self._watched[lease]
                self._lose(lease, watch)
            return
        watch.due = self._monotonic() + lease.ttl_ms / 3000
        if watch.due < self._wake_at:
            self._wake.set()

    @staticmethod
    def _lose(lease: Lease, watch: _Watch) -> None:
        lease.lost.set()
        if watch.on_loss is not None:
            watch.on_loss.cancel()
