"""Redis client factories; nothing connects until first use."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.core.settings import Settings

POOL_WAIT_S = 20.0  # how long a command waits for a free pooled connection


def make_redis(settings: Settings, *, blocking: bool = False) -> Redis:
    """A client for ``settings.redis_url``.

    ``blocking`` clients hold one dedicated connection with no read timeout, for
    BLMOVE/XREAD BLOCK; ordinary clients use a pool with short timeouts.
    """
    errors = [RedisConnectionError, RedisTimeoutError]
    if blocking:
        # No client-side retries: a retried BLMOVE after a lost reply would claim a
        # second id; the consumer's own backoff and orphan check handle it instead.
        return Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            single_connection_client=True,
            socket_timeout=None,
            socket_connect_timeout=5,
            socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=0),
        )
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    # A bounded pool: a burst of requests waits for a connection instead of opening
    # one Redis client each (hundreds of log followers must not mean hundreds).
    pool = BlockingConnectionPool.from_url(
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
    return Redis.from_pool(pool)
