"""shared/redis/eviction.py: which policies are refused, and how the policy is read when
CONFIG is disabled (managed services) or the server says nothing."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ResponseError

from shared.core.errors import ConfigError
from shared.core.settings import load_settings
from shared.redis.eviction import eviction_policy, require_no_eviction

pytestmark = pytest.mark.anyio


class Server:
    """Answers CONFIG GET and INFO memory like a server with ``policy``."""

    def __init__(self, policy: str | None, *, config: bool = True) -> None:
        self.policy = policy
        self.config = config

    async def config_get(self, name: str) -> dict[str, Any]:
        if not self.config:
            raise ResponseError("unknown command 'CONFIG'")
        return {} if self.policy is None else {name: self.policy}

    async def info(self, section: str) -> dict[str, Any]:
        return {} if self.policy is None else {"maxmemory_policy": self.policy}


async def test_the_policy_is_read_from_info_when_config_is_disabled() -> None:
    server: Any = Server("volatile-lru", config=False)

    assert await eviction_policy(server) == "volatile-lru"


async def test_a_server_that_says_nothing_has_no_known_policy() -> None:
    server: Any = Server(None, config=False)

    assert await eviction_policy(server) is None
    assert await require_no_eviction(server, load_settings({}), process="test") is None


@pytest.mark.parametrize(
    "policy",
    ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-ttl"],
)
async def test_every_evicting_policy_is_refused_by_name(policy: str) -> None:
    server: Any = Server(policy)

    with pytest.raises(ConfigError, match=f"maxmemory-policy is '{policy}'"):
        await require_no_eviction(server, load_settings({}), process="test")


async def test_noeviction_passes_and_allow_eviction_lets_any_policy_through() -> None:
    safe: Any = Server("noeviction")
    evicting: Any = Server("allkeys-lru")
    allowed = load_settings({"BUILDQ_ALLOW_EVICTION": "true"})

    assert await require_no_eviction(safe, load_settings({}), process="test") == "noeviction"
    assert await require_no_eviction(evicting, allowed, process="test") == "allkeys-lru"
