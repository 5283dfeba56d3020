"""The Lua scripts beside this module, registered once per Redis client."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

SCRIPT_NAMES = ("submit", "transition", "promote")


def _source(name: str) -> str:
    return resources.files("shared").joinpath("lua", f"{name}.lua").read_text("utf-8")


class Scripts:
    """Registered scripts; each call is one EVALSHA (EVAL once after a NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.submit: AsyncScript = redis.register_script(_source("submit"))
        self.transition: AsyncScript = redis.register_script(_source("transition"))
        self.promote: AsyncScript = redis.register_script(_source("promote"))
