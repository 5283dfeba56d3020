"""Redis client factories; nothing connects until first use."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.core.settings import Settings
from shared.redis.topology import make_topology_client, uses_topology

POOL_WAIT_S = 20.0  # how long a command waits for a free pooled connection


def make_redis(settings: Settings, *, blocking: bool = False) -> Redis:
    """A client for ``settings.redis_url``.

    ``blocking`` clients hold one dedicated connection with no read timeout, for
    BLMOVE/XREAD BLOCK; ordinary clients use a pool with short timeouts.
    """
    if uses_topology(settings):
        return make_topology_client(settings, blocking=blocking)
    errors = [RedisConnectionError, RedisTimeoutError]
    if blocking:
        # No client-side retries: a retried BLMOVE after a lost reply would claim a
        # second id; the consumer's own backoff and orphan check handle it instead.
        client = Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            single_connection_client=True,
            socket_timeout=None,
            socket_connect_timeout=5,
            socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=0),
        )
        client.connection_pool.connection_class = packing_with_hiredis(
            client.connection_pool.connection_class
        )
        return client
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    # A bounded pool: a burst of requests waits for a connection instead of opening
    # one Redis client each (hundreds of log followers must not mean hundreds).
    pool = BoundedPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=POOL_WAIT_S,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=retry,
        retry_on_error=errors,
    )
    pool.connection_class = packing_with_hiredis(pool.connection_class)
    return Redis.from_pool(pool)


class BoundedPool(ConnectionPool):
    """A pool of at most ``max_connections`` whose callers wait up to ``timeout`` s
    for a free connection (then ConnectionError) instead of failing at once.

    What redis-py's BlockingConnectionPool does, at the cost of its plain pool: a
    free slot is taken from a semaphore without waiting, where the blocking pool
    enters a Condition and arms a timeout timer for every command (~15 us of client
    CPU per command here: 105-108 against 120-126 us per GET, 20,000 GETs a round).
    Waiters are served first come, first served."""

    def __init__(self, *, timeout: float | None = POOL_WAIT_S, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._slots: asyncio.Semaphore | None = None  # made on the loop that uses it
        self._charged: set[AbstractConnection] = set()  # handed out, holding a slot

    async def get_connection(
        self, command_name: str | None = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self.max_connections)
        if not slots.locked():
            await slots.acquire()  # free: returns at once
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    await slots.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        take = super().get_connection
        try:
            if command_name is None and not keys and not options:
                connection: AbstractConnection = await take()  # type: ignore[no-untyped-call]
            else:  # redis-py before 5.3 names the command
                connection = await take(command_name, *keys, **options)  # type: ignore[no-untyped-call]
        except BaseException:
            slots.release()  # (a connection that failed to connect was released uncharged)
            raise
        self._charged.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        charged = connection in self._charged
        self._charged.discard(connection)
        try:
            await super().release(connection)
        finally:
            if charged and self._slots is not None:
                self._slots.release()


def pack_command(*args: str | bytes | int | float) -> bytes:
    """One command in the Redis protocol, as redis-py packs it, by hiredis's C packer:
    a third of the time of packing in Python for the long argument lists of Lua calls.
    A bool is refused (TypeError): send an int or a string."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub says 1-tuple
    return packed


class _HiredisPacking(AbstractConnection):
    """Packs this connection's commands with hiredis's C packer (:func:`pack_command`);
    mixed in before redis-py's connection class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _packed(args) or super().pack_command(*args)


class HiredisConnection(_HiredisPacking, Connection):
    """A TCP connection whose commands hiredis packs."""


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection whose commands hiredis packs."""


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    """A Unix socket connection whose commands hiredis packs."""


_HIREDIS_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}


def packing_with_hiredis(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """The connection class to use instead of redis-py's ``cls``: the same connection,
    its commands packed in C. redis-py's asyncio connections pack in Python, about a
    sixth of a lock call's client CPU; the bytes sent are the same. Another class is
    kept as it is."""
    return _HIREDIS_CLASSES.get(cls, cls)


def _packed(args: tuple[Any, ...]) -> list[bytes] | None:
    """``args`` packed by hiredis, or None where redis-py's packer must do it: a
    command name with its own arguments in it (``"CONFIG GET"``, which redis-py
    splits), or a value hiredis refuses (redis-py then raises its own error)."""
    name = args[0] if args else None
    if isinstance(name, str):
        name = name.encode()
    if not isinstance(name, bytes) or b" " in name:
        return None
    try:
        return [pack_command(*args)]
    except (TypeError, UnicodeError):
        return None


async def send_together(redis: Redis, *commands: Sequence[Any]) -> list[Any]:
    """Send ``commands`` in one write on ``redis``'s connection and read every reply;
    an error reply comes back as its exception, in its place. Nothing is retried.

    Redis runs a connection's commands in order: a command behind a blocking one
    (BLMOVE) runs the moment that one returns, before this client's next write.
    Unlike a redis-py pipeline this stays on a single-connection client's own
    connection and sends no SCRIPT EXISTS first. ``redis`` must not be used by
    anything else until this returns.
    """
    if not isinstance(redis, Redis):  # a RedisCluster routes each command to its node
        return [await _reply_or_error(redis, c) for c in commands]
    if redis.single_connection_client:
        conn = redis.connection or (await redis.initialize()).connection
        assert conn is not None  # initialize() sets it
        pool = None
    else:
        pool = redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    try:
        # A cancelled or failed send or read closes the connection (redis-py does it),
        # so a half-read reply never reaches the next command.
        await conn.send_packed_command(b"".join(pack_command(*c) for c in commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    finally:
        if pool is not None:
            await pool.release(conn)


async def _reply_or_error(redis: Any, command: Sequence[Any]) -> Any:
    """One command's reply, or its error reply as an exception in its place."""
    try:
        return await redis.execute_command(*command)
    except ResponseError as exc:
        return exc
