"""Per-service deploy locks: owner records, fencing tokens, waiters woken by pub/sub.

``{ns}:lock:<service>`` holds a JSON record set with NX PX; release and extend are
Lua compare-and-act on its token. Every acquisition INCRs ``{ns}:fence:<service>``,
so the fence stays the holder's until the next acquisition (``Sites.promote`` checks
it). Manual locks (API, CLI, ChatOps) use the same records with a long TTL.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import TracebackType

import anyio
from redis.asyncio import Redis

from shared.coord.lockbook import (
    Lease,
    LockBook,
    LockError,
    LockLostError,
    LockRecord,
    LockTimeoutError,
    validate_owner,
)
from shared.coord.waiting import Attempt, Subscriptions, next_wakeup
from shared.coord.watchdog import Watchdog
from shared.core.clock import Clock
from shared.core.names import validate_name
from shared.redis.keys import Keys

__all__ = ["DeployLock", "Lease", "LockError", "LockLostError", "LockRecord", "LockTimeoutError"]

DEFAULT_TTL_MS = 30_000
DEFAULT_POLL_MAX_S = 2.0
NAMES_CACHE_SIZE = 1024  # validated sets of services kept (cleared when full)


# (DeployLock instance, service) -> lease, per task: reentrancy without thread-locals.
_HELD: ContextVar[Mapping[tuple[str, str], Lease] | None] = ContextVar("buildq_locks", default=None)


def _task_id() -> int:
    """``anyio.get_current_task().id`` without building the TaskInfo on asyncio (it
    is ``id`` of the asyncio task there), as this runs on every acquisition."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop: another anyio backend
        task = None
    return id(task) if task is not None else anyio.get_current_task().id


class _Watched:
    """Renews ``lease`` by ``watchdog`` for a ``with`` block, which a loss cancels if
    ``cancel_on_loss`` (a plain class: this is entered on every hold)."""

    __slots__ = ("lease", "scope", "watchdog")

    def __init__(self, lease: Lease, watchdog: Watchdog, cancel_on_loss: bool) -> None:
        self.lease = lease
        self.watchdog = watchdog
        self.scope = anyio.CancelScope() if cancel_on_loss else None

    def __enter__(self) -> None:
        if self.scope is not None:
            self.scope.__enter__()
        self.watchdog.watch(self.lease, self.scope)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.watchdog.unwatch(self.lease)
        return self.scope is not None and bool(self.scope.__exit__(exc_type, exc, tb))


class DeployLock:
    """Locks over one namespace, taken in the name of ``owner`` (this worker)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        events_max: int,
        owner: str = "buildq",
        ttl_ms: int = DEFAULT_TTL_MS,
        poll_max_s: float = DEFAULT_POLL_MAX_S,
        clock: Clock = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = validate_owner(owner)
        self.ttl_ms = ttl_ms
        self.poll_max_s = poll_max_s
        self.monotonic = monotonic
        self.book = LockBook(redis, keys, events_max=events_max, clock=clock)
        self._uid = secrets.token_hex(8)  # reentrancy is per instance and task
        self._watchdog = self._new_watchdog()  # runs inside ``running()``
        self._subscriptions = Subscriptions(redis)
        self._valid: dict[tuple[str, ...], tuple[str, ...]] = {}  # see ``_names``

    # -- taking --------------------------------------------------------------------

    async def try_lock(
        self,
        service: str,
        *,
        timeout_s: float = 0.0,
        task: str = "",
        reason: str = "",
        ttl_ms: int | None = None,
    ) -> Lease | None:
        """The lease, or None if ``service`` stayed held for ``timeout_s`` (0: one try)."""
        return await self.try_lock_many(
            [service], timeout_s=timeout_s, task=task, reason=reason, ttl_ms=ttl_ms
        )

    async def lock(
        self,
        service: str,
        *,
        timeout_s: float | None = None,
        task: str = "",
        reason: str = "",
        ttl_ms: int | None = None,
    ) -> Lease:
        """Block until ``service`` is ours; LockTimeoutError (naming the holder) after
        ``timeout_s`` if given."""
        return await self.lock_many(
            [service], timeout_s=timeout_s, task=task, reason=reason, ttl_ms=ttl_ms
        )

    async def try_lock_many(
        self,
        services: Sequence[str],
        *,
        timeout_s: float = 0.0,
        task: str = "",
        reason: str = "",
        ttl_ms: int | None = None,
    ) -> Lease | None:
        """Every service, all or nothing, in one Lua call per attempt; else None."""
        try:
            return await self.lock_many(
                services, timeout_s=timeout_s, task=task, reason=reason, ttl_ms=ttl_ms
            )
        except LockTimeoutError:
            return None

    async def lock_many(
        self,
        services: Sequence[str],
        *,
        timeout_s: float | None = None,
        task: str = "",
        reason: str = "",
        ttl_ms: int | None = None,
    ) -> Lease:
        """Block until every service is ours at once (none is taken otherwise)."""
        names = self._names(services)
        again = self._reenter(names)
        if again is not None:
            return again
        ttl = ttl_ms or self.ttl_ms
        deadline = None if timeout_s is None else self.monotonic() + timeout_s
        lease, holder = await self._wait_for(names, ttl, task, reason, deadline)
        if lease is None:
            raise LockTimeoutError(
                f"{holder.service if holder else names[0]} is locked by "
                f"{holder.owner if holder else 'someone else'}",
                holder,
            )
        lease.task_id = _task_id()
        held = dict(_HELD.get() or {})
        held.update({(self._uid, s): lease for s in names})
        _HELD.set(held)
        return lease

    def _names(self, services: Sequence[str]) -> tuple[str, ...]:
        """``services`` validated, without repeats; remembered per set (a deployer
        locks the same few services again and again)."""
        spec = tuple(services)
        names = self._valid.get(spec)
        if names is None:
            names = tuple(dict.fromkeys(validate_name(s) for s in spec))
            if not names:
                raise LockError("no service to lock")
            if len(self._valid) >= NAMES_CACHE_SIZE:
                self._valid.clear()
            self._valid[spec] = names
        return names

    def _reenter(self, names: tuple[str, ...]) -> Lease | None:
        held = _HELD.get()
        if not held:
            return None
        task_id = _task_id()
        mine = {
            held[(self._uid, s)]
            for s in names
            if (lease := held.get((self._uid, s))) is not None
            and lease.task_id == task_id
            and lease.still_held()
        }
        if not mine:
            return None
        lease = mine.pop()
        if mine or set(names) != set(lease.services):
            raise LockError(
                "this task already holds some of these locks: take the same set again, "
                "or release first"
            )
        lease.depth += 1
        return lease

    async def _wait_for(
        self, names: tuple[str, ...], ttl_ms: int, task: str, reason: str, deadline: float | None
    ) -> tuple[Lease | None, LockRecord | None]:
        attempt = Attempt(
            self.book,
            names,
            owner=self.owner,
            ttl_ms=ttl_ms,
            task=task,
            reason=reason,
            monotonic=self.monotonic,
        )
        # A call that may wait takes its place in line with its first attempt: a
        # release from then on hands the lock over directly, even before the
        # subscription below is confirmed (the attempt after it finds the hand-over).
        bound_s = min(self.poll_max_s, ttl_ms / 3000)
        if deadline is not None:
            bound_s = min(bound_s, deadline - self.monotonic())
        try:
            lease, holder, pttl_ms = await attempt.run(
                queue_for_s=bound_s + 1.0 if bound_s > 0 else 0.0
            )
            if lease is not None or (deadline is not None and self.monotonic() >= deadline):
                return lease, holder
            # Subscribe, wait for the confirmation, then try again: a release between
            # our failed attempt and the subscription can then never be missed.
            channels = [self.keys.lock_channel(s) for s in names]
            async with self._subscriptions.listening(channels) as pubsub:
                while True:
                    # No busy polling: sleep until a release is published (or the lock
                    # is handed to us), the holder's TTL runs out (a crashed holder
                    # publishes nothing), or the poll bound; a waiter in line renews
                    # its place within ttl/3 so that a handed-over lease is known
                    # valid from then.
                    wait_s = self.poll_max_s if pttl_ms < 0 else pttl_ms / 1000 + 0.002
                    wait_s = min(wait_s, self.poll_max_s, ttl_ms / 3000)
                    if deadline is not None:
                        wait_s = min(wait_s, deadline - self.monotonic())
                        if wait_s <= 0:
                            return None, holder
                    lease, holder, pttl_ms = await attempt.run(queue_for_s=wait_s + 1.0)
                    if lease is None:
                        lease = await next_wakeup(pubsub, attempt, channels, wait_s)
                    if lease is not None:
                        return lease, None
        finally:
            # Out of line; a lock handed over meanwhile is given back at once.
            if attempt.queued and not attempt.done:
                with anyio.CancelScope(shield=True):
                    if await self.book.withdraw(names[0], token=attempt.token):
                        await self.book.release(names, token=attempt.token, actor=self.owner)

    # -- holding and letting go ----------------------------------------------------

    async def extend(self, lease: Lease, *, ttl_ms: int | None = None) -> bool:
        """Renew every lock of ``lease`` if still ours; False (and ``lost`` set) if not."""
        if lease.released:
            return False
        ttl = ttl_ms or lease.ttl_ms
        sent = self.monotonic()
        if await self.book.extend(lease.services, token=lease.token, ttl_ms=ttl):
            lease.valid_until = sent + ttl / 1000
            lease.ttl_ms = ttl
            return True
        lease.lost.set()
        return False

    async def release(self, lease: Lease) -> bool:
        """Let go (reentrant holds only count down); False if the lock was no longer ours."""
        if lease.released:
            return False
        if lease.depth > 1:
            lease.depth -= 1
            return lease.still_held()
        lease.released = True
        held = _HELD.get()
        if held and any(held.get((self._uid, s)) is lease for s in lease.services):
            _HELD.set({key: v for key, v in held.items() if v is not lease})
        released = await self.book.release(lease.services, token=lease.token, actor=lease.owner)
        if self._subscriptions.untidy and not self._subscriptions.keeping:
            await self._subscriptions.tidy()  # after our waiters were handed the lock
        return released == len(lease.services)

    async def aclose(self) -> None:
        """Close the pub/sub connections kept between waits outside :meth:`running`."""
        await self._subscriptions.aclose()

    @property
    def serving(self) -> bool:
        """True inside :meth:`running`."""
        return self._watchdog.running

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve this instance's lock calls while inside: one shared watchdog renews
        every ``holding`` block entered meanwhile (instead of a task per block), and
        a finished wait's pub/sub connection is made ready for the next wait off the
        waiter's path; kept connections are closed at the end."""
        if self.serving:
            raise LockError("this DeployLock is already running")
        async with anyio.create_task_group() as tg:
            await tg.start(self._watchdog.run)
            await tg.start(self._subscriptions.keep)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def holding(
        self,
        services: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        task: str = "",
        reason: str = "",
        ttl_ms: int | None = None,
        cancel_on_loss: bool = False,
    ) -> AsyncIterator[Lease]:
        """Hold the lock(s) for the block, renewed by a watchdog, released at the end.

        With ``cancel_on_loss`` the block is cancelled and LockLostError raised if
        the lock is lost; otherwise check ``lease.still_held()`` before acting. The
        watchdog is the shared one inside :meth:`running`, else a task of the block's.
        """
        names = [services] if isinstance(services, str) else list(services)
        lease = await self.lock_many(
            names, timeout_s=timeout_s, task=task, reason=reason, ttl_ms=ttl_ms
        )
        try:
            if lease.depth > 1:  # the outer hold's watchdog renews it
                yield lease
            elif self._watchdog.running:
                with _Watched(lease, self._watchdog, cancel_on_loss):
                    yield lease
            else:
                async with anyio.create_task_group() as tg:
                    watchdog = self._new_watchdog()
                    tg.start_soon(watchdog.run)
                    with _Watched(lease, watchdog, cancel_on_loss):
                        yield lease
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The block's own error surfaces through the watchdog's task group;
            # callers expect that error itself, not a group around it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.release(lease)
        if cancel_on_loss and lease.is_lost():
            raise LockLostError(f"lost the lock on {', '.join(lease.services)}")

    def _new_watchdog(self) -> Watchdog:
        return Watchdog(self.extend, idle_period_s=self.ttl_ms / 3000, monotonic=self.monotonic)

    # -- reading ---------------------------------------------------------------------

    async def holder(self, service: str) -> LockRecord | None:
        """Who holds ``service``'s lock now (for a job's ``waiting`` state), or None."""
        return await self.book.holder(service)

    async def last_holder(self, service: str) -> LockRecord | None:
        """Who had ``service``'s lock last (see :meth:`LockBook.last_holder`)."""
        return await self.book.last_holder(service)

    async def fence(self, service: str) -> int:
        """The current fencing token of ``service``."""
        return await self.book.fence(service)
