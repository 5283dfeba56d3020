"""Refuse a Redis that may evict keys: it would silently drop queue entries, running
jobs' active lists, fences and sequence counters (a promotion could go backwards).

Every process checks ``maxmemory-policy`` at start, before it touches S3 or anything
else; only ``noeviction`` is accepted. ``BUILDQ_ALLOW_EVICTION=true`` overrides the
refusal and is warned about on every start. ``buildq doctor`` reports the policy.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.core.errors import ConfigError
from shared.core.settings import Settings
from shared.redis.client import make_redis

log = structlog.get_logger("redis")

SAFE_POLICY = "noeviction"
CONNECT_WAIT_S = 30.0  # a process started before Redis waits this long to check it


async def eviction_policy(redis: Redis) -> str | None:
    """The server's ``maxmemory-policy``; None if it will not say (CONFIG renamed or
    refused, as on some managed services, and INFO without the field)."""
    try:
        reply: Any = await redis.config_get("maxmemory-policy")
        if reply.get("maxmemory-policy"):
            return str(reply["maxmemory-policy"])
    except ResponseError:
        pass  # CONFIG is disabled or renamed: INFO still says it on Redis >= 6 / Valkey
    info: Any = await redis.info("memory")
    policy = info.get("maxmemory_policy")
    return None if policy is None else str(policy)


def refusal(policy: str) -> str:
    return (
        f"Redis maxmemory-policy is {policy!r}: under memory pressure it evicts keys, and "
        "buildq would lose queued jobs, fences and sequence counters without a trace. "
        "Set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in the server's "
        "config), or set BUILDQ_ALLOW_EVICTION=true to run anyway"
    )


async def require_no_eviction(redis: Redis, settings: Settings, *, process: str) -> str | None:
    """Raise ConfigError unless the server never evicts (or the operator allowed it);
    returns the policy read, None if it could not be read in time."""
    try:
        with anyio.fail_after(CONNECT_WAIT_S):
            while True:
                try:
                    policy = await eviction_policy(redis)
                    break
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    log.warning("redis.unreachable_at_start", process=process, error=str(exc))
                    await anyio.sleep(1.0)
    except TimeoutError:
        log.warning("redis.policy_unchecked", process=process, reason="Redis unreachable")
        return None
    except RedisError as exc:
        log.warning("redis.policy_unchecked", process=process, reason=str(exc))
        return None
    if policy is None:
        log.warning("redis.policy_unchecked", process=process, reason="the server did not say")
    elif policy != SAFE_POLICY:
        if not settings.allow_eviction:
            raise ConfigError(refusal(policy))
        log.warning("redis.eviction_allowed", process=process, policy=policy)
    return policy


def check_at_start(settings: Settings, *, process: str) -> None:
    """:func:`require_no_eviction` from a process's synchronous ``main`` (blocking)."""

    async def check() -> None:
        redis = make_redis(settings)
        try:
            await require_no_eviction(redis, settings, process=process)
        finally:
            await redis.aclose()

    anyio.run(check)
