"""shared/coord/staging.py on fakeredis: Lua check-and-set claims with optional expiry."""

from __future__ import annotations

import anyio
import fakeredis
import pytest

from shared.coord.lockbook import Released
from shared.coord.staging import Staging
from shared.core.errors import ValidationError
from shared.redis.keys import Keys
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def staging(redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock) -> Staging:
    return Staging(redis, keys, events_max=1000, clock=clock)


async def claim_events(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> list[tuple[str, str, str]]:
    return [
        (e["action"], e["env"], e["owner"])
        for _, e in await redis.xrange(keys.events)
        if e["kind"] == "claim"
    ]


async def test_claim_records_owner_branch_and_time(
    staging: Staging, clock: FakeClock, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    won, claim = await staging.claim("staging", owner="alice", branch="feature/x", user_id="U1")

    assert won
    assert (claim.owner, claim.branch, claim.user_id) == ("alice", "feature/x", "U1")
    assert claim.claimed_at == int(clock.now_s * 1000)
    assert claim.expires_at is None
    assert await staging.get("staging") == claim
    assert await claim_events(redis, keys) == [("claimed", "staging", "alice")]


async def test_a_claimed_environment_is_refused_to_others_and_renewed_for_its_owner(
    staging: Staging, clock: FakeClock
) -> None:
    _, first = await staging.claim("staging", owner="alice", branch="a")
    won, current = await staging.claim("staging", owner="bob", branch="b")
    clock.advance(60)
    renewed, again = await staging.claim("staging", owner="alice", branch="c", ttl_s=600)

    assert not won
    assert (current.owner, current.branch) == ("alice", "a")
    assert renewed
    assert again.claimed_at == first.claimed_at  # the claim's age survives a renewal
    assert (again.branch, again.expires_at) == ("c", first.claimed_at + 60_000 + 600_000)


async def test_only_the_owner_releases_and_force_overrides(
    staging: Staging, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await staging.claim("staging", owner="alice")

    assert (await staging.release("staging", owner="bob"))[0] is Released.NOT_OWNER
    assert await staging.get("staging") is not None
    outcome, claim = await staging.release("staging", owner="root", force=True)
    assert outcome is Released.RELEASED
    assert claim is not None
    assert claim.owner == "alice"
    assert await staging.get("staging") is None
    assert (await staging.release("staging", owner="alice"))[0] is Released.NOT_HELD
    assert await claim_events(redis, keys) == [
        ("claimed", "staging", "alice"),
        ("forced", "staging", "alice"),
    ]


async def test_an_expired_claim_frees_the_environment(staging: Staging, clock: FakeClock) -> None:
    await staging.claim("staging", owner="alice", ttl_s=60)
    clock.advance(59)
    assert not (await staging.claim("staging", owner="bob"))[0]

    clock.advance(2)
    assert await staging.get("staging") is None
    assert await staging.claims() == []
    won, claim = await staging.claim("staging", owner="bob")
    assert won
    assert claim.owner == "bob"
    assert claim.claimed_at == int(clock.now_s * 1000)  # a new claim, not a renewal


async def test_releasing_an_expired_claim_reports_it_as_not_claimed(
    staging: Staging, clock: FakeClock
) -> None:
    await staging.claim("staging", owner="alice", ttl_s=1)
    clock.advance(5)

    assert (await staging.release("staging", owner="bob"))[0] is Released.NOT_HELD


async def test_claims_lists_every_unexpired_claim_by_environment(
    staging: Staging, clock: FakeClock
) -> None:
    await staging.claim("staging-2", owner="bob", branch="b")
    await staging.claim("staging-1", owner="alice", ttl_s=10)
    await staging.claim("qa", owner="carol", ttl_s=1000)
    clock.advance(20)

    assert [(c.env, c.owner) for c in await staging.claims()] == [
        ("qa", "carol"),
        ("staging-2", "bob"),
    ]


async def test_concurrent_claims_have_exactly_one_winner(staging: Staging) -> None:
    winners: list[str] = []

    async def claim(index: int) -> None:
        if (await staging.claim("staging", owner=f"user{index}"))[0]:
            winners.append(f"user{index}")

    async with anyio.create_task_group() as tg:
        for index in range(50):
            tg.start_soon(claim, index)

    assert len(winners) == 1
    current = await staging.get("staging")
    assert current is not None
    assert current.owner == winners[0]


@pytest.mark.parametrize(
    ("env", "owner", "branch"),
    [
        ("Staging", "alice", None),
        ("stag*", "alice", None),
        ("staging", "al ice", None),
        ("staging", "alice", "--upload-pack=x"),
        ("staging", "alice", "a..b"),
        ("staging", "alice", "has space"),
    ],
)
async def test_invalid_input_is_refused_before_redis(
    staging: Staging, redis: fakeredis.FakeAsyncRedis, env: str, owner: str, branch: str | None
) -> None:
    with pytest.raises(ValidationError):
        await staging.claim(env, owner=owner, branch=branch)
    assert await redis.dbsize() == 0
