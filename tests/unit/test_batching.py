"""shared/engine/batching.py on fakeredis: the calls of several slots share one write,
each gets its own reply (or error) in its place, and a stopped batcher fails what
still waits instead of leaving it hanging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from shared.engine import batching
from shared.engine.batching import Batcher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def own_client(redis: fakeredis.FakeAsyncRedis) -> fakeredis.FakeAsyncRedis:
    """A second client on the same fake server (the batcher closes its own)."""
    server = redis.connection_pool.connection_kwargs["server"]
    return fakeredis.FakeAsyncRedis(server=server, decode_responses=True)


def counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands in each write the batcher sends."""
    sizes: list[int] = []
    send = batching.send_together

    async def counted(redis: Any, *commands: Sequence[Any]) -> list[Any]:
        sizes.append(len(commands))
        return await send(redis, *commands)

    monkeypatch.setattr(batching, "send_together", counted)
    return sizes


async def test_calls_made_together_go_out_in_one_write_each_with_its_own_reply(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = counting_writes(monkeypatch)
    batcher = Batcher(own_client(redis))
    replies: dict[int, Any] = {}

    async def caller(n: int) -> None:
        replies[n] = await batcher.call("RPUSH", "order", str(n))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        async with anyio.create_task_group() as callers:
            for n in range(5):
                callers.start_soon(caller, n)
        tg.cancel_scope.cancel()

    assert sizes == [5]  # queued while the batcher waited: one write
    assert await redis.lrange("order", 0, -1) == ["0", "1", "2", "3", "4"]  # in call order
    assert replies == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}


async def test_a_call_made_while_a_batch_is_on_the_wire_goes_in_the_next_one(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = counting_writes(monkeypatch)
    batcher = Batcher(own_client(redis))
    first_sent = anyio.Event()
    send = batching.send_together

    async def slow_first(conn: Any, *commands: Sequence[Any]) -> list[Any]:
        first_sent.set()
        return await send(conn, *commands)

    monkeypatch.setattr(batching, "send_together", slow_first)
    got: list[Any] = []
    late_done = anyio.Event()

    async def late() -> None:
        await first_sent.wait()  # the first batch is being sent
        got.append(await batcher.call("INCR", "n"))
        late_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        tg.start_soon(late)
        got.append(await batcher.call("INCR", "n"))
        await late_done.wait()
        tg.cancel_scope.cancel()

    assert got == [1, 2]
    assert sizes == [1, 1]


async def test_an_error_reply_comes_back_to_its_caller_alone(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    batcher = Batcher(own_client(redis))
    await redis.set("text", "x")
    replies: dict[str, Any] = {}

    async def caller(name: str, *command: Any) -> None:
        replies[name] = await batcher.call(*command)

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        async with anyio.create_task_group() as callers:
            callers.start_soon(caller, "bad", "INCR", "text")
            callers.start_soon(caller, "good", "INCR", "n")
        tg.cancel_scope.cancel()

    assert isinstance(replies["bad"], ResponseError)
    assert replies["good"] == 1


async def test_a_failed_write_raises_in_every_caller_of_that_batch_and_the_next_works(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = Batcher(own_client(redis))
    send = batching.send_together
    failures = [RedisConnectionError("connection reset")]

    async def failing_once(conn: Any, *commands: Sequence[Any]) -> list[Any]:
        if failures:
            raise failures.pop()
        return await send(conn, *commands)

    monkeypatch.setattr(batching, "send_together", failing_once)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await batcher.call("INCR", "n")
        except RedisError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        async with anyio.create_task_group() as callers:
            for _ in range(3):
                callers.start_soon(caller)
        after = await batcher.call("INCR", "n")
        tg.cancel_scope.cancel()

    assert [str(e) for e in errors] == ["connection reset"] * 3
    assert after == 1  # none of the failed batch ran; the batcher goes on


async def test_stopping_fails_the_calls_still_waiting_and_refuses_new_ones(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = own_client(redis)
    batcher = Batcher(conn)
    sending = anyio.Event()

    async def never_answers(c: Any, *commands: Sequence[Any]) -> list[Any]:
        sending.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(batching, "send_together", never_answers)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await batcher.call("INCR", "n")
        except RedisError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, anyio.create_task_group() as running:
        running.start_soon(batcher.run)
        tg.start_soon(caller)  # in flight when the batcher stops
        await sending.wait()
        tg.start_soon(caller)  # queued behind it
        await anyio.lowlevel.checkpoint()  # let it queue its call
        running.cancel_scope.cancel()

    assert len(errors) == 2
    assert all(isinstance(e, RedisConnectionError) for e in errors)
    with pytest.raises(RedisConnectionError):
        await batcher.call("INCR", "n")
    assert await redis.get("n") is None
