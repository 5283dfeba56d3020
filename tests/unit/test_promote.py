"""promote.lua via Scripts: a service's live alias only moves forward in seq."""

from __future__ import annotations

import fakeredis
import pytest

from shared.keys import Keys
from shared.scripts import SCRIPT_NAMES, Scripts

pytestmark = pytest.mark.anyio


async def promote(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, job_id: str, seq: int, *, at: int = 1000
) -> list[object]:
    scripts = Scripts(redis)
    result = await scripts.promote(
        keys=[keys.site("web"), keys.events], args=[job_id, seq, "7", at, 1000, "web"]
    )
    return list(result)


async def test_first_promotion_sets_the_alias_and_emits_an_event(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await promote(redis, keys, "job-1", 1) == [1]

    assert await redis.hgetall(keys.site("web")) == {
        "id": "job-1",
        "seq": "1",
        "fence": "7",
        "promoted_at": "1000",
    }
    events = [f for _, f in await redis.xrange(keys.events)]
    assert events == [{"kind": "site", "service": "web", "id": "job-1", "seq": "1", "at": "1000"}]


async def test_higher_seq_promotes(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    await promote(redis, keys, "job-1", 1)

    assert await promote(redis, keys, "job-5", 5, at=2000) == [1]

    assert await redis.hget(keys.site("web"), "id") == "job-5"
    assert await redis.hget(keys.site("web"), "seq") == "5"


@pytest.mark.parametrize("seq", [4, 5])
async def test_lower_or_equal_seq_is_refused_with_the_live_deployment(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, seq: int
) -> None:
    await promote(redis, keys, "job-5", 5)
    alias = await redis.hgetall(keys.site("web"))
    n_events = await redis.xlen(keys.events)

    result = await promote(redis, keys, "job-old", seq, at=9999)

    assert result == [0, "job-5", "5"]
    assert await redis.hgetall(keys.site("web")) == alias
    assert await redis.xlen(keys.events) == n_events


async def test_seq_is_compared_numerically_not_as_text(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await promote(redis, keys, "job-9", 9)

    assert await promote(redis, keys, "job-10", 10) == [1]
    assert (await promote(redis, keys, "job-9b", 9))[0] == 0


async def test_every_script_file_is_registered(redis: fakeredis.FakeAsyncRedis) -> None:
    scripts = Scripts(redis)

    for name in SCRIPT_NAMES:
        assert getattr(scripts, name).script.strip()
