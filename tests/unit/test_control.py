"""shared/engine/control.py on fakeredis: control notices are parsed strictly and
delivered to the follower, which reconnects after a Redis outage. The tests wait for
the subscription (a condition) and for delivered notices (events), never a fixed time."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import fakeredis
import pytest

import shared.engine.control
from shared.engine.control import follow_control, parse_notice
from shared.redis.keys import Keys

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type": "cancel", "id": "job-a"}', {"type": "cancel", "id": "job-a"}),
        ('{"type": "fleet"}', {"type": "fleet"}),
        ('{"id": "job-a"}', None),  # no type
        ('["type"]', None),
        ("not json", None),
        (None, None),
        (1, None),
    ],
)
def test_parse_notice_accepts_only_objects_with_a_type(data: Any, expected: Any) -> None:
    assert parse_notice(data) == expected


class Follower:
    """Runs ``follow_control`` and collects what it delivers."""

    def __init__(self, connect: Callable[[], Any], channel: str, want: int) -> None:
        self.connect, self.channel, self.want = connect, channel, want
        self.notices: list[dict[str, Any]] = []
        self.done = anyio.Event()

    async def on_notice(self, notice: dict[str, Any]) -> None:
        self.notices.append(notice)
        if len(self.notices) == self.want:
            self.done.set()

    async def __call__(self) -> None:
        await follow_control(self.connect, self.channel, self.on_notice)


class Connector:
    """Makes connections to the test's server; ``subscribed`` is set on each subscribe."""

    def __init__(self, redis: fakeredis.FakeAsyncRedis) -> None:
        self.server = redis.connection_pool.connection_kwargs["server"]
        self.subscribed = anyio.Event()

    def __call__(self) -> fakeredis.FakeAsyncRedis:
        conn = fakeredis.FakeAsyncRedis(server=self.server, decode_responses=True)
        make_pubsub = conn.pubsub

        def pubsub(**kwargs: Any) -> Any:
            ps = make_pubsub(**kwargs)
            subscribe = ps.subscribe

            async def announcing(*args: Any, **kw: Any) -> Any:
                result = await subscribe(*args, **kw)
                self.subscribed.set()  # fakeredis applies a command as it is sent
                return result

            ps.subscribe = announcing
            return ps

        conn.pubsub = pubsub  # type: ignore[method-assign]
        return conn


async def test_every_valid_notice_is_delivered_in_order_and_junk_is_skipped(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    connect = Connector(redis)
    follower = Follower(connect, keys.control_channel, want=2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follower)
        with anyio.fail_after(5):
            await connect.subscribed.wait()
        await redis.publish(keys.control_channel, json.dumps({"type": "cancel", "id": "a"}))
        await redis.publish(keys.control_channel, "junk")
        await redis.publish(keys.control_channel, json.dumps({"type": "permit"}))
        with anyio.fail_after(5):
            await follower.done.wait()
        tg.cancel_scope.cancel()

    assert follower.notices == [{"type": "cancel", "id": "a"}, {"type": "permit"}]


async def test_the_follower_reconnects_after_losing_redis(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.engine.control, "RECONNECT_S", 0)
    good = Connector(redis)
    attempts: list[int] = []

    def flaky() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            down = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
            down.connection_pool.connection_kwargs["server"].connected = False
            return down
        return good()

    follower = Follower(flaky, keys.control_channel, want=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(follower)
        with anyio.fail_after(5):
            await good.subscribed.wait()
        await redis.publish(keys.control_channel, json.dumps({"type": "fleet"}))
        with anyio.fail_after(5):
            await follower.done.wait()
        tg.cancel_scope.cancel()

    assert len(attempts) >= 2
    assert follower.notices == [{"type": "fleet"}]
