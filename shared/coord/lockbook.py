"""Lock records in Redis: the Lua calls, who holds a lock, who had it last, manual locks.

A record is JSON ``{token, owner, host, pid, task, acquired_at, expires_at, reason,
user_id, fence}`` at ``{ns}:lock:<service>`` (SET NX PX inside ``lock_acquire.lua``).
``{ns}:lock-history:<service>`` keeps the ``current`` and ``previous`` records, the
latter ended (``released``, ``forced`` or ``expired``), for "who had it last".
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.coord.replies import (
    LOCK_ACQUIRE,
    LOCK_EXTEND,
    LOCK_RELEASE,
    LOCK_WITHDRAW,
    AcquireReply,
    ExtendReply,
    Released,
    WithdrawReply,
)
from shared.core.clock import Clock, now_ms
from shared.core.errors import TransientError, ValidationError
from shared.core.names import validate_name
from shared.redis.keys import Keys
from shared.redis.scripts import source

OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}$")
MAX_REASON_CHARS = 200
KEY_CACHE_SIZE = 1024  # sets of services whose KEYS are kept (cleared when full)
MANUAL_TASK = "manual"  # the task of every lock a person took (API, CLI, ChatOps)


def validate_owner(value: str) -> str:
    """``value`` if it is a usable owner name (a person, a worker), else ValidationError."""
    if not OWNER_RE.fullmatch(value):
        raise ValidationError(
            f"invalid owner {value[:80]!r}: use 1-64 letters, digits and . _ @ : + -"
        )
    return value


def clean_reason(value: str) -> str:
    """The reason on one line, at most 200 characters."""
    return " ".join(value.split())[:MAX_REASON_CHARS]


@dataclass(frozen=True, slots=True)
class LockRecord:
    """A lock record as stored; ``end`` and ``released_*`` only in history entries."""

    service: str
    token: str
    owner: str
    host: str
    pid: int
    task: str
    fence: int
    acquired_at: int
    expires_at: int
    reason: str = ""
    user_id: str | None = None
    end: str | None = None  # released | forced | expired
    released_at: int | None = None
    released_by: str | None = None

    @classmethod
    def parse(cls, service: str, raw: str | bytes) -> LockRecord:
        """Decode a stored JSON record."""
        data: dict[str, Any] = json.loads(raw)
        names = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in names and v is not None}
        for name in ("pid", "fence", "acquired_at", "expires_at", "released_at"):
            if name in values:
                values[name] = int(values[name])
        return cls(service=service, **values)

    def public(self) -> dict[str, Any]:
        """The record as the API shows it: everything but the token."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "token"}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Acquisition:
    """What one acquire call did. ``record`` is ours (of the first service) when the
    lock was taken, handed over or renewed (unless not asked for), and the holder's
    when it is ``HELD``."""

    reply: AcquireReply
    record: LockRecord | None
    fences: tuple[int, ...] = ()  # taken: one per service; handed over: the one
    holder_ttl_ms: int = 0  # held: how long the holder's lock still lives


def _mine(service: str, body: str, got: Acquisition) -> LockRecord:
    """Our record of a lock taken or handed over: the one we sent, with its fence."""
    return LockRecord.parse(service, f'{body[:-1]},"fence":{got.fences[0]}}}')


class LockError(TransientError):
    """A lock could not be taken or used as asked."""


class LockTimeoutError(LockError):
    """The lock stayed held by someone else until the deadline."""

    def __init__(self, message: str, holder: LockRecord | None) -> None:
        super().__init__(message)
        self.holder = holder


class LockLostError(LockError):
    """A held lock expired or was taken over before its holder finished."""


@dataclass(eq=False)
class Lease:
    """One acquisition of one or more services by this process."""

    services: tuple[str, ...]
    token: str
    fences: dict[str, int]
    owner: str
    task: str
    ttl_ms: int
    valid_until: float  # monotonic seconds; the lock may have expired after this
    monotonic: Callable[[], float] = time.monotonic
    released: bool = False
    depth: int = 1
    task_id: int | None = None
    # Made on first use: most leases are released before anyone asks (an Event costs
    # an async-library lookup, on every acquisition otherwise).
    _lost: anyio.Event | None = field(default=None, repr=False)

    @property
    def lost(self) -> anyio.Event:
        """Set once the lock is known lost (an extend found it gone, or the watchdog
        stopped while the lease was still held)."""
        if self._lost is None:
            self._lost = anyio.Event()
        return self._lost

    @property
    def fence(self) -> int:
        """The fencing token of the (first) service: pass it to ``Sites.promote``."""
        return self.fences[self.services[0]]

    def is_lost(self) -> bool:
        """``lost.is_set()``, without making the event."""
        return self._lost is not None and self._lost.is_set()

    def still_held(self) -> bool:
        """False once released, once an extend found the lock gone, or once the TTL
        may have run out since the last successful extend (a paused process)."""
        return not (self.released or self.is_lost()) and self.monotonic() < self.valid_until


class LockBook:
    """Reads and writes lock records; every change is one Lua call."""

    def __init__(
        self, redis: Redis, keys: Keys, *, events_max: int, clock: Clock = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.events_max = events_max
        self.clock = clock
        self.host = socket.gethostname()
        self._pid = 0  # the process _host_pid names
        self._host_pid = ""
        self._key_cache: dict[tuple[str, ...], tuple[list[str], list[str], list[str]]] = {}
        self._acquire: AsyncScript = redis.register_script(source("lock_acquire"))
        self._release: AsyncScript = redis.register_script(source("lock_release"))
        self._extend: AsyncScript = redis.register_script(source("lock_extend"))
        self._withdraw: AsyncScript = redis.register_script(source("lock_withdraw"))

    async def acquire(
        self,
        names: Sequence[str],
        *,
        token: str,
        owner: str,
        ttl_ms: int,
        task: str = "",
        reason: str = "",
        user_id: str | None = None,
        refresh: bool = False,
        queue_until_ms: int = 0,
        own_record: bool = True,
    ) -> Acquisition:
        """One ``lock_acquire.lua`` call.

        With ``queue_until_ms`` (one service) a refused caller waits in line until
        then: a release hands the lock straight to the oldest live waiter. Without
        ``own_record`` the ``record`` of a lock taken or handed over is left None
        (every lock call: the caller knows what it sent)."""
        got, body = await self._acquire_call(
            names,
            token=token,
            owner=owner,
            ttl_ms=ttl_ms,
            task=task,
            reason=reason,
            user_id=user_id,
            refresh=refresh,
            queue_until_ms=queue_until_ms,
        )
        if got.record is not None or not own_record:
            return got
        return replace(got, record=_mine(names[0], body, got))

    async def _acquire_call(
        self,
        names: Sequence[str],
        *,
        token: str,
        owner: str,
        ttl_ms: int,
        task: str,
        reason: str,
        user_id: str | None,
        refresh: bool,
        queue_until_ms: int,
    ) -> tuple[Acquisition, str]:
        """The acquisition, and the record we sent (JSON without its fence)."""
        now = now_ms(self.clock)
        body = self._body(
            token, owner=owner, task=task, reason=reason, user_id=user_id, now=now, ttl_ms=ttl_ms
        )
        args = (len(names), ttl_ms, now, self.events_max, owner, int(refresh), queue_until_ms)
        reply = await self._acquire(keys=self._keys(names), args=[*args, token, body, *names])
        what = LOCK_ACQUIRE(reply[0])
        if what is AcquireReply.HELD:
            holder = LockRecord.parse(names[int(reply[1]) - 1], reply[2])
            return Acquisition(what, holder, holder_ttl_ms=int(reply[3])), body
        if what is AcquireReply.RENEWED:
            return Acquisition(what, LockRecord.parse(names[0], reply[1])), body
        return Acquisition(what, None, tuple(int(f) for f in reply[1:])), body

    def _body(
        self,
        token: str,
        *,
        owner: str,
        task: str,
        reason: str,
        user_id: str | None,
        now: int,
        ttl_ms: int,
    ) -> str:
        """The record as ``lock_acquire.lua`` stores it, less the fence it adds.
        Formatted here rather than by ``json.dumps`` of a dict: this runs on every
        acquisition."""
        pid = os.getpid()
        if pid != self._pid:  # forked: the record names this process
            self._pid, self._host_pid = pid, f'"host":{json.dumps(self.host)},"pid":{pid}'
        return (
            f'{{"token":{json.dumps(token)},"owner":{json.dumps(owner)},{self._host_pid},'
            f'"task":{json.dumps(task)},"reason":{json.dumps(clean_reason(reason))},'
            f'"user_id":{json.dumps(user_id)},"acquired_at":{now},"expires_at":{now + ttl_ms}}}'
        )

    async def extend(self, names: Sequence[str], *, token: str, ttl_ms: int) -> bool:
        """Renew every lock in ``names`` that still carries ``token``: all, or none."""
        keys: list[str] = []
        for s in names:
            keys += [self.keys.lock(s), self.keys.lock_history(s)]
        reply = await self._extend(keys=keys, args=[len(names), token, ttl_ms, now_ms(self.clock)])
        return LOCK_EXTEND(reply) is ExtendReply.EXTENDED

    async def release(self, names: Sequence[str], *, token: str, actor: str) -> int:
        """Release every lock of ``names`` that still carries ``token``; how many were
        (a lock that is no longer ours is left alone)."""
        reply = await self._release_call(names, mode="token", value=token, actor=actor)
        return int(reply[0])  # token mode answers with a count, not a reply code

    async def _release_call(
        self, names: Sequence[str], *, mode: str, value: str, actor: str
    ) -> Any:
        """One ``lock_release.lua`` call (mode ``token``, ``owner`` or ``force``)."""
        _, channels, keys = self._keys_and_channels(names)
        args: list[str | int] = [len(names), mode, value, now_ms(self.clock), self.events_max]
        args += [actor, *channels]
        return await self._release(keys=keys, args=args)

    async def withdraw(self, service: str, *, token: str) -> int | None:
        """Leave the line for ``service``; the fence if it was handed to ``token``."""
        k = self.keys
        reply = await self._withdraw(keys=[k.lock(service), k.lock_waiters(service)], args=[token])
        if LOCK_WITHDRAW(reply[0]) is WithdrawReply.HANDED_OVER:
            return int(reply[1])
        return None

    def _keys(self, names: Sequence[str]) -> list[str]:
        return self._keys_and_channels(names)[0]

    def _keys_and_channels(self, names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
        """The scripts' KEYS for ``names``, each name followed by its channel, and
        ``lock_release.lua``'s KEYS (those, then ``delayed`` and each service's waiting
        jobs); built once per set of names (a deployer locks the same few services
        again and again)."""
        spec = tuple(names)
        cached = self._key_cache.get(spec)
        if cached is None:
            k = self.keys
            keys, channels = [k.events, k.locks], []
            for s in spec:
                keys += [k.lock(s), k.fence(s), k.lock_history(s), k.lock_waiters(s)]
                channels += [s, k.lock_channel(s)]
            release = [*keys, k.delayed, *(k.lock_jobs(s) for s in spec)]
            if len(self._key_cache) >= KEY_CACHE_SIZE:
                self._key_cache.clear()
            cached = self._key_cache[spec] = (keys, channels, release)
        return cached

    # -- reading -----------------------------------------------------------------------

    async def holder(self, service: str) -> LockRecord | None:
        """Who holds ``service``'s lock now, or None."""
        raw = await self.redis.get(self.keys.lock(validate_name(service)))
        return LockRecord.parse(service, raw) if raw else None

    async def last_holder(self, service: str) -> LockRecord | None:
        """Who had ``service``'s lock last: the holder before the current one, or the
        latest one (with ``end`` set) when it is free."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(k.lock(validate_name(service)))
        pipe.hmget(k.lock_history(service), ["current", "previous"])
        held, (current, previous) = await pipe.execute()
        raw = previous if held else current
        if not raw:
            return None
        record = LockRecord.parse(service, raw)
        if record.end is None and not held:
            return replace(record, end="expired", released_at=record.expires_at)
        return record

    async def fence(self, service: str) -> int:
        """The current fencing token of ``service`` (0 before its first acquisition)."""
        return int(await self.redis.get(self.keys.fence(validate_name(service))) or 0)

    async def held_locks(self, limit: int = 1000) -> list[LockRecord]:
        """Every lock held now, oldest acquisition first."""
        services = [str(s) for s in await self.redis.zrevrange(self.keys.locks, 0, limit - 1)]
        if not services:
            return []
        raws = await self.redis.mget([self.keys.lock(s) for s in services])
        found = [LockRecord.parse(s, raw) for s, raw in zip(services, raws, strict=True) if raw]
        return sorted(found, key=lambda r: r.acquired_at)

    # -- manual locks (API, CLI, ChatOps) ------------------------------------------------

    async def acquire_manual(
        self, service: str, *, owner: str, ttl_ms: int, reason: str = "", user_id: str | None = None
    ) -> tuple[bool, LockRecord]:
        """``(True, record)`` when taken, or renewed by the same owner; ``(False,
        holder)`` when someone else holds it. Never waits."""
        service, owner = validate_name(service), validate_owner(owner)
        got, body = await self._acquire_call(
            [service],
            token=os.urandom(16).hex(),
            owner=owner,
            ttl_ms=ttl_ms,
            task=MANUAL_TASK,
            reason=reason,
            user_id=user_id,
            refresh=True,
            queue_until_ms=0,
        )
        return got.reply is not AcquireReply.HELD, got.record or _mine(service, body, got)

    async def release_manual(
        self, service: str, *, owner: str, force: bool = False
    ) -> tuple[Released, LockRecord | None]:
        """Release ``service`` if ``owner`` holds it as a manual lock, or whoever holds
        it with ``force`` (the caller checks that ``owner`` is an admin; the history
        keeps ``end: forced`` and ``released_by``).

        A deploy's lock (task other than ``manual``) is never released by owner name,
        so naming a deployer's public worker id cannot abort its deploy."""
        service, owner = validate_name(service), validate_owner(owner)
        if not force:
            holder = await self.holder(service)
            if holder is not None and holder.task != MANUAL_TASK:
                return Released.NOT_OWNER, holder
        mode = "force" if force else "owner"
        reply = await self._release_call([service], mode=mode, value=owner, actor=owner)
        outcome = LOCK_RELEASE(reply[0])
        record = None if outcome is Released.NOT_HELD else LockRecord.parse(service, reply[1])
        return outcome, record
