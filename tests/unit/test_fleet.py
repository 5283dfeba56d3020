"""shared/engine/fleet.py on fakeredis with Lua: the fleet switches, and the gate that
lets a slot claim only while the fleet is not paused and, under ``max_concurrency``,
only with one of the fleet-wide permits. Permit expiry runs on the FakeClock; slots
that must wait are observed blocked with ``wait_all_tasks_blocked``, never by sleeping."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import fakeredis
import pytest

from shared.engine.fleet import FleetGate, FleetState, read_fleet, write_fleet
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

PERMIT_TTL_MS = 6_000
LONG_WAIT_S = 60.0  # a slot re-checks after this long; the tests wake it first


# The one place that knows how a gate is constructed.
def make_gate(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock, *, enabled: bool = True
) -> FleetGate:
    return FleetGate(redis, keys, enabled=enabled, permit_ttl_ms=PERMIT_TTL_MS, clock=clock)


class Turn:
    """A slot waiting for its turn in the background; ``got`` once it may claim."""

    def __init__(self, gate: FleetGate, slot: str, stopping: anyio.Event) -> None:
        self.gate, self.slot, self.stopping = gate, slot, stopping
        self.result: bool | None = None
        self.got = anyio.Event()

    async def __call__(self) -> None:
        self.result = await self.gate.wait_turn(self.slot, self.stopping, LONG_WAIT_S)
        self.got.set()


# --- the switches -----------------------------------------------------------------


async def test_a_fresh_fleet_is_running_without_a_cap(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await read_fleet(redis, keys) == FleetState(paused=False, max_concurrency=None)


async def test_switches_are_written_read_back_and_the_cap_can_be_lifted(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await write_fleet(redis, keys, paused=True, max_concurrency=2) == FleetState(True, 2)
    assert await write_fleet(redis, keys, paused=False) == FleetState(False, 2)  # cap kept
    assert await write_fleet(redis, keys, max_concurrency=None) == FleetState(False, None)
    assert await read_fleet(redis, keys) == FleetState(False, None)


async def test_a_change_is_announced_on_the_control_channel(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.control_channel)
    try:
        await write_fleet(redis, keys, paused=True)
        with anyio.fail_after(5):
            message = None
            while message is None or message["type"] != "message":
                message = await pubsub.get_message(timeout=1.0)
        assert json.loads(message["data"]) == {"type": "fleet"}
    finally:
        await pubsub.aclose()


# --- the gate ---------------------------------------------------------------------


async def test_a_gate_that_does_not_obey_the_fleet_always_lets_slots_claim(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await write_fleet(redis, keys, paused=True, max_concurrency=1)
    gate = make_gate(redis, keys, clock, enabled=False)

    assert await gate.refresh() is False
    assert await gate.wait_turn("w:0", anyio.Event(), LONG_WAIT_S) is True


async def test_pausing_tells_slots_to_stop_and_resuming_lets_a_waiting_slot_claim(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    gate = make_gate(redis, keys, clock)
    await write_fleet(redis, keys, paused=True)
    assert await gate.refresh() is True  # newly paused: cancel claims in progress
    assert await gate.refresh() is False  # still paused: nothing new
    turn = Turn(gate, "w:0", anyio.Event())

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn)
        await anyio.wait_all_tasks_blocked()
        assert not turn.got.is_set()
        await write_fleet(redis, keys, paused=False)
        assert await gate.refresh() is False
        with anyio.fail_after(5):
            await turn.got.wait()

    assert turn.result is True


async def test_a_waiting_slot_gives_up_when_the_worker_stops(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    gate = make_gate(redis, keys, clock)
    await write_fleet(redis, keys, paused=True)
    await gate.refresh()
    stopping = anyio.Event()
    turn = Turn(gate, "w:0", stopping)

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn)
        await anyio.wait_all_tasks_blocked()
        stopping.set()
        gate.wake()  # as the consumer does on stop

    assert turn.result is False


async def test_under_a_cap_of_one_a_second_worker_waits_until_the_permit_is_released(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await write_fleet(redis, keys, max_concurrency=1)
    first, second = make_gate(redis, keys, clock), make_gate(redis, keys, clock)
    assert await first.refresh() is True  # a new cap: slots re-check before claiming
    await second.refresh()
    assert await first.wait_turn("a:0", anyio.Event(), LONG_WAIT_S) is True
    turn = Turn(second, "b:0", anyio.Event())

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn)
        await anyio.wait_all_tasks_blocked()
        assert not turn.got.is_set()
        await first.release("a:0")
        second.wake()  # what the permit notice on the control channel does
        with anyio.fail_after(5):
            await turn.got.wait()

    assert turn.result is True
    assert await redis.zrange(keys.permits, 0, -1) == ["b:0"]


async def test_a_permit_of_a_worker_that_stopped_refreshing_it_expires(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await write_fleet(redis, keys, max_concurrency=1)
    dead, alive = make_gate(redis, keys, clock), make_gate(redis, keys, clock)
    await dead.refresh()
    await alive.refresh()
    assert await dead.wait_turn("dead:0", anyio.Event(), LONG_WAIT_S) is True
    clock.advance(PERMIT_TTL_MS / 1000 + 0.001)

    assert await alive.wait_turn("alive:0", anyio.Event(), LONG_WAIT_S) is True
    assert await redis.zrange(keys.permits, 0, -1) == ["alive:0"]


async def test_a_refreshing_worker_keeps_its_permit_past_the_ttl(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await write_fleet(redis, keys, max_concurrency=1)
    holder, other = make_gate(redis, keys, clock), make_gate(redis, keys, clock)
    await holder.refresh()
    await other.refresh()
    assert await holder.wait_turn("holder:0", anyio.Event(), LONG_WAIT_S) is True
    for _ in range(3):
        clock.advance(PERMIT_TTL_MS / 2000)
        await holder.refresh()  # every heartbeat
    turn = Turn(other, "other:0", anyio.Event())

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn)
        await anyio.wait_all_tasks_blocked()
        assert not turn.got.is_set()
        tg.cancel_scope.cancel()

    assert await redis.zrange(keys.permits, 0, -1) == ["holder:0"]


async def test_lifting_the_cap_gives_held_permits_back(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    await write_fleet(redis, keys, max_concurrency=2)
    gate = make_gate(redis, keys, clock)
    await gate.refresh()
    assert await gate.wait_turn("w:0", anyio.Event(), LONG_WAIT_S) is True
    assert await redis.zcard(keys.permits) == 1

    await write_fleet(redis, keys, max_concurrency=None)
    assert await gate.refresh() is False  # a looser fleet needs no cancelling
    assert await gate.wait_turn("w:0", anyio.Event(), LONG_WAIT_S) is True

    assert await redis.zcard(keys.permits) == 0
