"""Redis client factories; nothing connects until first use."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.settings import Settings


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
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=retry,
        retry_on_error=errors,
    )
