"""Sites.promote (promote.lua): a live alias moves only forward, only with a current
fence, and never to a job that has ended. Also: every Lua script file is loaded by
some module and compiles."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from lupa.lua51 import LuaRuntime  # fakeredis[lua]'s Lua, a test dependency

from shared.coord.sites import Promotion, Sites, Verdict
from shared.engine.jobs import JobStore, Status
from shared.redis import scripts as scripts_module
from shared.redis.keys import Keys
from shared.redis.scripts import SCRIPT_NAMES, Scripts, source
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def sites(redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock) -> Sites:
    return Sites(redis, keys, events_max=1000, clock=clock)


async def promote(sites: Sites, job_id: str, seq: int, fence: int | None = None) -> Promotion:
    return await sites.promote("web", job_id, seq, fence=fence)


async def test_first_promotion_sets_the_alias_and_emits_an_event(
    sites: Sites, redis: fakeredis.FakeAsyncRedis, keys: Keys, clock: FakeClock
) -> None:
    assert await promote(sites, "job-1", 1) == Promotion(Verdict.PROMOTED, "job-1", 1)

    at = str(int(clock() * 1000))
    assert await sites.live("web") == {"id": "job-1", "seq": "1", "fence": "", "promoted_at": at}
    events = [f for _, f in await redis.xrange(keys.events)]
    assert events == [{"kind": "site", "service": "web", "id": "job-1", "seq": "1", "at": at}]


async def test_higher_seq_promotes(sites: Sites) -> None:
    await promote(sites, "job-1", 1)

    assert (await promote(sites, "job-5", 5)).outcome is Verdict.PROMOTED

    assert (await sites.live("web"))["id"] == "job-5"


@pytest.mark.parametrize("seq", [4, 5])
async def test_lower_or_equal_seq_is_refused_with_the_live_deployment(
    sites: Sites, redis: fakeredis.FakeAsyncRedis, keys: Keys, seq: int
) -> None:
    await promote(sites, "job-5", 5)
    alias = await sites.live("web")
    n_events = await redis.xlen(keys.events)

    result = await promote(sites, "job-old", seq)

    assert result == Promotion(Verdict.SUPERSEDED, "job-5", 5)
    assert await sites.live("web") == alias
    assert await redis.xlen(keys.events) == n_events


async def test_seq_is_compared_numerically_not_as_text(sites: Sites) -> None:
    await promote(sites, "job-9", 9)

    assert (await promote(sites, "job-10", 10)).outcome is Verdict.PROMOTED
    assert (await promote(sites, "job-9b", 9)).outcome is Verdict.SUPERSEDED


async def test_a_stale_fence_is_refused_and_the_current_one_promotes(
    sites: Sites, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await redis.set(keys.fence("web"), 3)

    stale = await promote(sites, "job-1", 1, fence=2)
    assert stale.outcome is Verdict.FENCED
    assert await sites.live("web") == {}

    assert (await promote(sites, "job-1", 1, fence=3)).outcome is Verdict.PROMOTED
    assert (await sites.live("web"))["fence"] == "3"


async def test_a_fence_without_any_lock_ever_taken_is_refused(sites: Sites) -> None:
    assert (await promote(sites, "job-1", 1, fence=1)).outcome is Verdict.FENCED


async def test_an_ended_job_never_goes_live(sites: Sites, store: JobStore) -> None:
    seq = await store.submit("job-c", service="web", repo_url="https://h/o/web")
    await store.transition("job-c", Status.CANCELLED)

    result = await sites.promote("web", "job-c", seq)

    assert result.outcome is Verdict.ENDED
    assert result.detail == "cancelled"
    assert await sites.live("web") == {}


async def test_every_script_file_is_registered(redis: fakeredis.FakeAsyncRedis) -> None:
    scripts = Scripts(redis)

    for name in SCRIPT_NAMES:
        assert getattr(scripts, name).script.strip()


def test_every_script_file_is_used_and_compiles() -> None:
    """Each script (``_name`` files are includes) is loaded by some module with
    ``source("name")``, and its text with the includes spliced in compiles as Lua 5.1
    (the server's dialect)."""
    lua51 = LuaRuntime()
    lua = Path(scripts_module.__file__).with_name("lua")
    code = "\n".join(
        f.read_text("utf-8")
        for top in ("shared", "deployer", "uploader")
        for f in (Path(__file__).parents[2] / top).rglob("*.py")
    )
    names = sorted(f.stem for f in lua.glob("*.lua") if not f.stem.startswith("_"))
    assert len(names) >= 15
    for name in names:
        assert f'source("{name}")' in code, f"{name}.lua is loaded by no module"
        assert not [x for x in source(name).splitlines() if x.startswith("-- #include ")]
        lua51.compile(source(name))  # LuaSyntaxError names the line
