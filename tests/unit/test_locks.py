"""shared/coord/locks.py and shared/coord/lockbook.py on fakeredis (with Lua and pub/sub)."""

from __future__ import annotations

import json

import anyio
import fakeredis
import pytest

from shared.coord.lockbook import LockBook, Released, validate_owner
from shared.coord.locks import DeployLock, LockError, LockLostError, LockTimeoutError
from shared.core.errors import ValidationError
from shared.redis.keys import Keys
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.anyio


class FakeMonotonic:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make(redis: fakeredis.FakeAsyncRedis, keys: Keys, owner: str, **kw: object) -> DeployLock:
    return DeployLock(redis, keys, events_max=1000, owner=owner, **kw)  # type: ignore[arg-type]


async def lock_events(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> list[tuple[str, str]]:
    return [
        (e["action"], e["owner"]) for _, e in await redis.xrange(keys.events) if e["kind"] == "lock"
    ]


async def in_line(redis: fakeredis.FakeAsyncRedis, keys: Keys, count: int) -> None:
    """Return once ``count`` waiters are queued for "web"."""
    with anyio.fail_after(5):
        while await redis.hlen(keys.lock_waiters("web")) < count:  # noqa: ASYNC110 - Redis state
            await anyio.sleep(0.001)


async def test_lock_stores_a_json_record_with_owner_host_pid_task_fence_and_expiry(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    locks = DeployLock(redis, keys, events_max=1000, owner="deployer-1", ttl_ms=30_000, clock=clock)
    lease = await locks.lock("web", task="deploy job-1", reason="release")

    raw = json.loads(await redis.get(keys.lock("web")))
    assert set(raw) == {
        "token",
        "owner",
        "host",
        "pid",
        "task",
        "fence",
        "acquired_at",
        "expires_at",
        "reason",
        "user_id",
    }
    assert raw["token"] == lease.token
    assert (raw["owner"], raw["task"], raw["reason"]) == ("deployer-1", "deploy job-1", "release")
    assert raw["fence"] == lease.fence == 1
    assert raw["expires_at"] - raw["acquired_at"] == 30_000
    assert raw["acquired_at"] == int(clock.now_s * 1000)
    assert 0 < await redis.pttl(keys.lock("web")) <= 30_000
    assert await redis.get(keys.fence("web")) == "1"


async def test_try_lock_is_refused_while_another_owner_holds_the_lock(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first, second = make(redis, keys, "first"), make(redis, keys, "second")
    lease = await first.lock("web")

    assert await second.try_lock("web") is None
    assert await first.release(lease) is True
    again = await second.try_lock("web")
    assert again is not None
    assert again.fence == 2


async def test_every_acquisition_takes_the_next_fence_and_the_fence_key_follows_it(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer")
    fences = []
    for _ in range(3):
        lease = await locks.lock("web")
        fences.append(lease.fence)
        assert await locks.fence("web") == lease.fence
        await locks.release(lease)

    assert fences == [1, 2, 3]
    assert await locks.fence("web") == 3  # unchanged by releases


async def test_release_and_extend_with_a_stale_token_leave_the_new_holder_alone(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    first, second = make(redis, keys, "first"), make(redis, keys, "second")
    old = await first.lock("web")
    await redis.delete(keys.lock("web"))  # as if it expired
    new = await second.lock("web")

    assert await first.extend(old) is False
    assert old.lost.is_set()
    assert not old.still_held()
    assert await first.release(old) is False
    holder = await second.holder("web")
    assert holder is not None
    assert (holder.owner, holder.token) == ("second", new.token)
    assert await second.extend(new) is True


async def test_still_held_turns_false_once_the_ttl_may_have_passed_without_an_extend(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    monotonic = FakeMonotonic()
    locks = make(redis, keys, "deployer", ttl_ms=1000, monotonic=monotonic)
    lease = await locks.lock("web")
    monotonic.now_s += 0.9
    assert lease.still_held()
    assert await locks.extend(lease) is True  # renewed from now: valid 1 s more
    monotonic.now_s += 0.9
    assert lease.still_held()

    monotonic.now_s += 0.2  # paused past the TTL
    assert not lease.still_held()


async def test_lock_is_reentrant_within_one_task_and_counts_down(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks, other = make(redis, keys, "deployer"), make(redis, keys, "other")
    outer = await locks.lock("web")
    inner = await locks.lock("web", timeout_s=0)

    assert inner is outer
    assert outer.depth == 2
    assert await locks.fence("web") == 1  # no second acquisition
    assert await locks.release(inner) is True
    assert await other.try_lock("web") is None  # the outer hold remains
    assert await locks.release(outer) is True
    assert await other.try_lock("web") is not None


async def test_another_task_does_not_inherit_the_hold(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer")
    outer = await locks.lock("web")
    seen: list[object] = []

    async def child() -> None:
        seen.append(await locks.try_lock("web"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)

    assert seen == [None]
    assert outer.depth == 1


async def test_taking_part_of_a_held_set_again_is_refused(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer")
    await locks.lock("web")

    with pytest.raises(LockError, match="already holds"):
        await locks.lock_many(["web", "api"])
    assert await redis.exists(keys.lock("api")) == 0


async def test_multi_lock_is_all_or_nothing(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    other, mine = make(redis, keys, "other"), make(redis, keys, "mine")
    held = await other.lock("api")

    assert await mine.try_lock_many(["web", "api", "db"]) is None
    assert await redis.exists(keys.lock("web"), keys.lock("db")) == 0
    assert await redis.exists(keys.fence("web"), keys.fence("db")) == 0

    await other.release(held)
    lease = await mine.try_lock_many(["web", "api", "db"])
    assert lease is not None
    assert lease.fences == {"web": 1, "api": 2, "db": 1}
    tokens = {json.loads(await redis.get(keys.lock(s)))["token"] for s in ("web", "api", "db")}
    assert tokens == {lease.token}
    assert await mine.release(lease) is True
    assert await redis.exists(keys.lock("web"), keys.lock("api"), keys.lock("db")) == 0


async def test_a_release_hands_the_lock_to_the_oldest_waiter_with_the_next_fence(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    holder = make(redis, keys, "holder")
    waiters = [make(redis, keys, f"waiter{i}", poll_max_s=30) for i in range(2)]
    lease = await holder.lock("web")
    order: list[tuple[str, int]] = []
    done = anyio.Event()

    async def wait(locks: DeployLock) -> None:
        got = await locks.lock("web", timeout_s=10)
        order.append((locks.owner, got.fence))
        await locks.release(got)
        if len(order) == 2:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, waiters[0])
        await in_line(redis, keys, 1)
        tg.start_soon(wait, waiters[1])
        await in_line(redis, keys, 2)
        await holder.release(lease)
        with anyio.fail_after(5):
            await done.wait()

    assert order == [("waiter0", 2), ("waiter1", 3)]
    assert await lock_events(redis, keys) == [
        ("locked", "holder"),
        ("released", "holder"),
        ("locked", "waiter0"),
        ("released", "waiter0"),
        ("locked", "waiter1"),
        ("released", "waiter1"),
    ]


async def test_a_waiter_that_times_out_names_the_holder_and_leaves_the_line(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter")
    lease = await holder.lock("web", reason="migrating")

    with pytest.raises(LockTimeoutError) as caught:
        await waiter.lock("web", timeout_s=0.05)

    assert caught.value.holder is not None
    assert (caught.value.holder.owner, caught.value.holder.reason) == ("holder", "migrating")
    assert await redis.hlen(keys.lock_waiters("web")) == 0
    await holder.release(lease)
    assert await redis.exists(keys.lock("web")) == 0  # not handed to the gone waiter


async def test_a_cancelled_waiter_leaves_the_line(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter", poll_max_s=30)
    lease = await holder.lock("web")
    with anyio.move_on_after(0.1):
        await waiter.lock("web")

    assert await redis.hlen(keys.lock_waiters("web")) == 0
    await holder.release(lease)
    assert await redis.exists(keys.lock("web")) == 0


async def test_holding_renews_in_the_background_and_releases_at_the_end(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=150)
    async with locks.holding("web", task="deploy") as lease:
        await anyio.sleep(0.4)  # well past the TTL: only renewals keep it
        assert lease.still_held()
        assert (await locks.holder("web")).token == lease.token  # type: ignore[union-attr]

    assert lease.released
    assert await redis.exists(keys.lock("web")) == 0


async def test_holding_with_cancel_on_loss_stops_the_block_when_the_lock_is_lost(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=150)
    reached_end = False

    async def deploy() -> None:
        nonlocal reached_end
        async with locks.holding("web", cancel_on_loss=True):
            await redis.delete(keys.lock("web"))  # taken away
            await anyio.sleep(5)
            reached_end = True

    with anyio.fail_after(2), pytest.raises(LockLostError):
        await deploy()
    assert not reached_end


async def test_manual_lock_only_its_owner_unlocks_and_an_admin_may_force(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    book = LockBook(redis, keys, events_max=1000)
    taken, record = await book.acquire_manual("web", owner="alice", ttl_ms=3_600_000, reason="qa")
    assert taken
    assert record.task == "manual"

    assert (await book.release_manual("web", owner="bob"))[0] is Released.NOT_OWNER
    assert (await book.holder("web")).owner == "alice"  # type: ignore[union-attr]
    outcome, _ = await book.release_manual("web", owner="root", force=True)
    assert outcome is Released.RELEASED
    assert (await book.release_manual("web", owner="alice"))[0] is Released.NOT_HELD
    last = await book.last_holder("web")
    assert last is not None
    assert (last.owner, last.end, last.released_by) == ("alice", "forced", "root")
    assert await lock_events(redis, keys) == [("locked", "alice"), ("forced", "alice")]


async def test_manual_lock_by_the_same_owner_renews_it_keeping_the_fence(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    book = LockBook(redis, keys, events_max=1000, clock=clock)
    _, first = await book.acquire_manual("web", owner="alice", ttl_ms=60_000, reason="a")
    clock.advance(10)
    taken, again = await book.acquire_manual("web", owner="alice", ttl_ms=60_000, reason="b")
    refused, holder = await book.acquire_manual("web", owner="bob", ttl_ms=60_000)

    assert taken
    assert (again.fence, again.token, again.acquired_at) == (
        first.fence,
        first.token,
        first.acquired_at,
    )
    assert again.expires_at == first.expires_at + 10_000
    assert again.reason == "b"
    assert not refused
    assert holder.owner == "alice"


async def test_last_holder_is_the_previous_one_while_held_and_the_latest_when_free(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    a, b = make(redis, keys, "alpha"), make(redis, keys, "beta")
    assert await a.last_holder("web") is None
    lease = await a.lock("web")
    await a.release(lease)
    free = await a.last_holder("web")
    lease = await b.lock("web")
    held = await a.last_holder("web")
    await redis.delete(keys.lock("web"))  # beta's lock expires
    expired = await a.last_holder("web")

    assert free is not None
    assert (free.owner, free.end) == ("alpha", "released")
    assert held is not None
    assert (held.owner, held.end) == ("alpha", "released")
    assert expired is not None
    assert (expired.owner, expired.end) == ("beta", "expired")
    await a.lock("web")
    assert ("expired", "beta") in await lock_events(redis, keys)


async def test_held_locks_lists_only_locks_held_now(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer")
    book = locks.book
    web = await locks.lock("web")
    await book.acquire_manual("api", owner="alice", ttl_ms=60_000)
    await locks.release(web)

    assert [(r.service, r.owner) for r in await book.held_locks()] == [("api", "alice")]


@pytest.mark.parametrize("owner", ["", "-x", "a b", "x" * 65, "al\nice", "ünï"])
def test_owner_names_are_validated(owner: str) -> None:
    with pytest.raises(ValidationError):
        validate_owner(owner)


@pytest.mark.parametrize("service", ["", "Web", "a/b", "*", "web:x", "x" * 64])
async def test_invalid_service_names_never_reach_redis(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, service: str
) -> None:
    locks = make(redis, keys, "deployer")
    with pytest.raises(ValidationError):
        await locks.try_lock(service)
    with pytest.raises(ValidationError):
        await locks.book.acquire_manual(service, owner="alice", ttl_ms=1000)
    assert await redis.dbsize() == 0


async def test_a_waiter_is_in_line_from_its_first_attempt_and_finds_an_early_hand_over(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder, waiter = make(redis, keys, "holder"), make(redis, keys, "waiter", poll_max_s=30)
    lease = await holder.lock("web")
    sent: list[int] = []
    acquire = waiter.book.acquire

    async def first_then_release(names: list[str], **kw: object) -> object:
        got = await acquire(names, **kw)  # type: ignore[arg-type]
        sent.append(kw["queue_until_ms"])  # type: ignore[arg-type]
        if len(sent) == 1:
            assert await redis.hlen(keys.lock_waiters("web")) == 1  # in line already
            assert await holder.release(lease) is True  # before the waiter subscribed
        return got

    monkeypatch.setattr(waiter.book, "acquire", first_then_release)
    with anyio.fail_after(5):  # far below the 30 s poll bound
        got = await waiter.lock("web", timeout_s=20)

    assert got.fence == 2
    assert sent[0] > 0
    assert len(sent) == 2  # the attempt after subscribing found the hand-over
    assert json.loads(await redis.get(keys.lock("web")))["token"] == got.token
    assert await redis.hlen(keys.lock_waiters("web")) == 0
    await waiter.release(got)


async def test_a_try_lock_that_cannot_wait_never_takes_a_place_in_line(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    holder, other = make(redis, keys, "holder"), make(redis, keys, "other")
    lease = await holder.lock("web")

    assert await other.try_lock("web") is None
    assert await redis.hlen(keys.lock_waiters("web")) == 0
    await holder.release(lease)
    assert await redis.exists(keys.lock("web")) == 0  # not handed to anybody


async def test_a_handed_over_record_has_the_shape_and_times_of_a_taken_one(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    holder = make(redis, keys, "holder", clock=clock)
    waiter = make(redis, keys, "waiter", poll_max_s=30, ttl_ms=20_000, clock=clock)
    lease = await holder.lock("web")
    async with anyio.create_task_group() as tg:
        got: list[object] = []

        async def wait() -> None:
            got.append(await waiter.lock("web", task="deploy job-2", reason="next"))

        tg.start_soon(wait)
        await in_line(redis, keys, 1)
        clock.advance(7)
        await holder.release(lease)

    raw = await redis.get(keys.lock("web"))
    record = json.loads(raw)
    released_at = int(clock.now_s * 1000)
    assert raw.startswith('{"token":')
    assert record["token"] == got[0].token  # type: ignore[attr-defined]
    assert (record["owner"], record["task"], record["reason"]) == ("waiter", "deploy job-2", "next")
    assert (record["fence"], record["acquired_at"]) == (2, released_at)
    assert record["expires_at"] == released_at + 20_000
    assert json.loads(await redis.hget(keys.lock_history("web"), "current")) == record
    assert ("locked", "waiter") in await lock_events(redis, keys)


async def test_records_whose_strings_look_like_keys_are_extended_and_released_correctly(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    locks = make(redis, keys, "deployer", ttl_ms=30_000, clock=clock)
    reason = 'x","owner":"mallory","fence":99,"expires_at":1,"end":"forced'
    lease = await locks.lock("web", task='"token":"t"}', reason=reason)
    clock.advance(5)

    assert await locks.extend(lease) is True
    record = json.loads(await redis.get(keys.lock("web")))
    assert record["expires_at"] == int(clock.now_s * 1000) + 30_000
    assert (record["owner"], record["fence"], record["reason"]) == ("deployer", 1, reason)
    assert await locks.release(lease) is True

    last = await locks.last_holder("web")
    assert last is not None
    assert (last.owner, last.fence, last.end, last.released_by) == (
        "deployer",
        1,
        "released",
        "deployer",
    )
    assert (last.reason, last.task) == (reason, '"token":"t"}')
    assert last.released_at == int(clock.now_s * 1000)
    events = [e for _, e in await redis.xrange(keys.events) if e["kind"] == "lock"]
    assert [(e["action"], e["owner"], e["fence"]) for e in events] == [
        ("locked", "deployer", "1"),
        ("released", "deployer", "1"),
    ]


async def test_a_record_in_another_key_order_is_still_extended_and_released(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    locks = make(redis, keys, "deployer")
    lease = await locks.lock("web")
    record = json.loads(await redis.get(keys.lock("web")))
    reordered = dict(reversed(list(record.items())))  # as cjson may write it
    await redis.set(keys.lock("web"), json.dumps(reordered), px=30_000)

    assert await locks.extend(lease) is True
    assert await locks.release(lease) is True
    last = await locks.last_holder("web")
    assert last is not None
    assert (last.owner, last.fence, last.end) == ("deployer", 1, "released")
    assert await lock_events(redis, keys) == [("locked", "deployer"), ("released", "deployer")]
