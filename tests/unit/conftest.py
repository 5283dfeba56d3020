"""Fixtures for the fast unit tests: fakeredis (with Lua), a controllable clock."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import fakeredis
import pytest
from moto import mock_aws

from shared.core.settings import Settings, load_settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from uploader.loghub import LogHub


class FakeClock:
    """A clock that only moves when told to; callable like ``time.time``."""

    def __init__(self, start_s: float = 1_700_000_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class WriteOnlyBucket:
    """The bucket for API tests whose routes write only the submit path's acceptance
    copies (``shared/engine/durable.py``): kept in ``saved``; any other use of
    storage fails loudly."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}

    async def put_json(self, key: str, value: Any) -> None:
        self.saved[key] = value

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"storage.{name} used by a test that expects no storage use")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_buildq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's or CI's own ``BUILDQ_*`` variables never reach a unit test."""
    for name in list(os.environ):
        if name.upper().startswith("BUILDQ_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings() -> Settings:
    return load_settings({})


@pytest.fixture
def keys() -> Keys:
    return Keys("unit")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def hub(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> AsyncIterator[LogHub]:
    """The uploader's stream reader (``uploader/loghub.py``) running on ``redis``."""
    server = redis.connection_pool.connection_kwargs["server"]
    running = LogHub(
        make_reader=lambda: fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
        redis=redis,
        keys=keys,
        max_followers=10,
        block_ms=20,  # fakeredis cannot CLIENT UNBLOCK: a short block stands in
    )
    async with anyio.create_task_group() as tg:
        await tg.start(running.run)
        yield running
        tg.cancel_scope.cancel()


@pytest.fixture
def store(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings, clock: FakeClock
) -> JobStore:
    return JobStore(redis, keys, settings, clock=clock)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's S3 in-process, never the developer's own AWS settings."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield
