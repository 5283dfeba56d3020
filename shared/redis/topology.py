"""Clients for the Redis topologies buildq runs on beyond one server: Redis Cluster
(``BUILDQ_REDIS_CLUSTER=true``, ``BUILDQ_REDIS_URL`` names a seed node) and Sentinel
(``BUILDQ_REDIS_SENTINELS=host:port,…`` with ``BUILDQ_REDIS_SENTINEL_SERVICE``).

Every key carries the ``{ns}`` hash tag (``shared/redis/keys.py``), so on a cluster
all of buildq's keys live in one slot: multi-key Lua scripts, BLMOVE between two
lists and XREAD over several streams stay valid, and pub/sub (classic PUBLISH,
which a cluster forwards to every node) still wakes lock waiters. A Sentinel client
asks the sentinels for the current primary on every (re)connection, so the daemons
follow a failover through their usual reconnect-and-retry paths.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.core.errors import ConfigError
from shared.core.settings import Settings


def uses_topology(settings: Settings) -> bool:
    """Whether ``settings`` name a cluster or sentinels rather than one server."""
    return settings.redis_cluster or bool(settings.redis_sentinels.strip())


def parse_sentinels(raw: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as pairs; ConfigError on anything else."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"BUILDQ_REDIS_SENTINELS: {item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ConfigError("BUILDQ_REDIS_SENTINELS names no sentinel")
    return out


def _common(settings: Settings, *, blocking: bool) -> dict[str, Any]:
    retries = 0 if blocking else 3  # a retried BLMOVE after a lost reply takes twice
    url = urlsplit(settings.redis_url)
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": None if blocking else 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries),
    }
    if url.username:
        kwargs["username"] = url.username
    if url.password:
        kwargs["password"] = url.password
    if url.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


def make_topology_client(settings: Settings, *, blocking: bool = False) -> Redis:
    """A client for the configured cluster or sentinel-watched primary.

    Typed as :class:`Redis`: buildq uses the command subset both clients share
    (commands, Lua scripts, pipelines, pub/sub)."""
    common = _common(settings, blocking=blocking)
    if settings.redis_cluster:
        errors = [RedisConnectionError, RedisTimeoutError]
        cluster: Any = RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            retry_on_error=errors,
            **common,
        )
        return cluster  # type: ignore[no-any-return]
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
        parse_sentinels(settings.redis_sentinels),
        sentinel_kwargs={"socket_timeout": 5, "socket_connect_timeout": 5},
    )
    db = urlsplit(settings.redis_url).path.strip("/") or "0"
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_service, db=int(db) if db.isdigit() else 0, **common
    )
    return client
