"""The Lua scripts beside this module, registered once per Redis client.

A line ``-- #include NAME`` splices in ``lua/NAME.lua`` (whose own includes are
spliced in turn): the transition logic is written once and shared by
``transition.lua`` and ``take.lua``, the fair-queue insert by them and ``submit.lua``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

SCRIPT_NAMES = ("submit", "transition", "take", "promote", "cancel", "revive", "permit", "stale")
INCLUDE = "-- #include "


def _read(name: str) -> str:
    return resources.files("shared.redis").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def source(name: str) -> str:
    """The full text of script ``name`` with its includes spliced in."""
    lines = []
    for line in _read(name).splitlines():
        if line.startswith(INCLUDE):
            lines.append(source(line[len(INCLUDE) :].strip()))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class Scripts:
    """Registered scripts; each call is one EVALSHA (EVAL once after a NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.submit: AsyncScript = redis.register_script(source("submit"))
        self.transition: AsyncScript = redis.register_script(source("transition"))
        self.take: AsyncScript = redis.register_script(source("take"))
        self.promote: AsyncScript = redis.register_script(source("promote"))
        self.cancel: AsyncScript = redis.register_script(source("cancel"))
        self.revive: AsyncScript = redis.register_script(source("revive"))
        self.permit: AsyncScript = redis.register_script(source("permit"))
        self.stale: AsyncScript = redis.register_script(source("stale"))
