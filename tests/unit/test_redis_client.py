"""``shared/redis/client.py``: buildq's clients pack commands with hiredis's C packer,
byte for byte as redis-py packs them, and leave to redis-py what hiredis cannot pack
(compound command names, values redis-py refuses, with redis-py's own errors)."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from shared.core.settings import load_settings
from shared.redis.client import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
    make_redis,
    packing_with_hiredis,
)


class Kind(enum.StrEnum):
    LIVE = "live"


SAMPLES: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "k", "v"),
    ("EVALSHA", "a" * 40, 2, "{ns}:lock:web", "{ns}:lockhist:web", 1.5, -3, 2**70),
    ("HSET", b"key", b"\x00\xff binary", "é ünïcode", Kind.LIVE, memoryview(b"mv")),
    ("XADD", "s", "*", "line", "x" * 100_000),  # past redis-py's chunking cutoff
    ("CONFIG GET", "maxmemory"),  # redis-py splits the name: left to it
    (b"CLIENT SETNAME", b"buildq"),
]


@pytest.mark.parametrize("args", SAMPLES, ids=lambda a: str(a[0]))
def test_commands_are_packed_exactly_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, ["a"], {"a": 1}])
def test_a_value_redis_py_refuses_is_still_refused_with_its_error(bad: Any) -> None:
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", bad)


def test_text_that_is_not_valid_unicode_gets_redis_pys_error() -> None:
    with pytest.raises(UnicodeEncodeError):
        Connection().pack_command("SET", "k", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        HiredisConnection().pack_command("SET", "k", "\ud800")


def test_every_client_make_redis_builds_packs_with_hiredis() -> None:
    for url, plain, fast in (
        ("redis://127.0.0.1:6379/0", Connection, HiredisConnection),
        ("rediss://127.0.0.1:6380/0", SSLConnection, HiredisSSLConnection),
        ("unix:///tmp/valkey.sock", UnixDomainSocketConnection, HiredisUnixConnection),
    ):
        settings = load_settings(environ={}, redis_url=url)
        for blocking in (False, True):
            client = make_redis(settings, blocking=blocking)
            assert client.connection_pool.connection_class is fast, (url, blocking)
            assert issubclass(fast, plain)
    assert packing_with_hiredis(HiredisConnection) is HiredisConnection  # unknown: as is
