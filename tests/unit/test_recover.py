"""``buildq doctor --recover`` (shared/cli/recover.py) on fakeredis with Lua and the
local-directory storage: after Redis loses everything, aliases, counters and
unfinished jobs come back from the S3 copies; nothing moves backwards; a second run
changes nothing; a stale lock holder's fence never matches again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fakeredis
import pytest

from shared.cli.recover import OVERRIDE_LOST, Recoverer, Recovery
from shared.coord.sites import Sites, Verdict
from shared.core.errors import StorageError
from shared.core.settings import Settings
from shared.engine.durable import accepted_copies, accepted_key, keep_accepted
from shared.engine.history import keep_ended
from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from shared.storage.localdir import LocalStorage
from shared.storage.manifest import manifest_key
from shared.storage.s3 import alias_key, record_key

if TYPE_CHECKING:
    from conftest import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def storage(tmp_path: Path) -> LocalStorage:
    backend = LocalStorage(tmp_path / "bucket-root", "bucket", concurrency=4)
    await backend.ensure_bucket()
    return backend


@dataclass
class World:
    """Redis, the job store and the bucket one recovery test works on."""

    redis: fakeredis.FakeAsyncRedis
    store: JobStore
    keys: Keys
    settings: Settings
    storage: LocalStorage
    clock: FakeClock

    def recoverer(self) -> Recoverer:
        return Recoverer(self.redis, self.keys, self.settings, self.storage, self.clock)


@pytest.fixture
def w(store: JobStore, storage: LocalStorage, clock: FakeClock) -> World:
    return World(store.redis, store, store.keys, store.settings, storage, clock)


async def accept(
    store: JobStore, storage: LocalStorage, service: str, **fields: Any
) -> tuple[str, int]:
    """Submit a job as the uploader does: into Redis, then its S3 acceptance copy."""
    job_id = f"{len(await store.redis.keys('*job:*')) + 1:020x}"
    seq = await store.submit(
        job_id, service=service, repo_url=f"https://git.test/{service}", **fields
    )
    record = await store.get(job_id)
    assert record is not None
    assert await keep_accepted(storage, record)
    return job_id, seq


async def end(store: JobStore, storage: LocalStorage, job_id: str, status: Status) -> None:
    """End a job and keep its final record, as a consumer does."""
    await store.transition(job_id, status, ack=store.keys.ingest)
    await keep_ended(store.redis, store.keys, storage, await store.get_raw(job_id))


async def go_live(w: World, service: str, job_id: str, seq: int) -> int:
    """Promote under a fresh fence, publish a manifest and the alias copy, as a deploy does."""
    redis, keys, storage = w.redis, w.keys, w.storage
    fence = int(await redis.incr(keys.fence(service)))
    result = await Sites(redis, keys, events_max=100).promote(service, job_id, seq, fence=fence)
    assert result.outcome is Verdict.PROMOTED
    await storage.put_json(manifest_key(job_id), {"files": {}})
    alias = {"service": service, "id": job_id, "seq": seq, "fence": fence, "promoted_at": 1}
    await storage.put_json(alias_key(service), alias)
    return fence


async def test_an_accepted_job_is_listed_from_its_copy_with_service_and_seq(
    store: JobStore, storage: LocalStorage
) -> None:
    job_id, seq = await accept(store, storage, "web")

    [copy] = await accepted_copies(storage)

    assert (copy.service, copy.seq, copy.job_id) == ("web", seq, job_id)
    assert copy.key == accepted_key("web", seq, job_id)


async def test_a_key_that_is_not_a_jobs_is_refused() -> None:
    with pytest.raises(ValueError, match="not a job"):
        accepted_key("../web", 1, "0" * 20)


async def test_a_refused_acceptance_write_is_logged_not_raised(store: JobStore) -> None:
    class Refusing(LocalStorage):
        async def put_json(self, key: str, value: Any) -> None:
            raise StorageError("S3 unreachable: test")

    job_id = "0" * 19 + "1"
    await store.submit(job_id, service="web", repo_url="https://git.test/web")
    record = await store.get(job_id)
    assert record is not None

    assert await keep_accepted(Refusing(Path("/nonexistent"), "b"), record) is False


async def test_after_flushall_aliases_counters_and_unfinished_jobs_come_back(w: World) -> None:
    redis, store, keys, storage = w.redis, w.store, w.keys, w.storage
    v1, seq1 = await accept(store, storage, "web")
    fence = await go_live(w, "web", v1, seq1)
    await end(store, storage, v1, Status.LIVE)
    failed, _ = await accept(store, storage, "web")
    await end(store, storage, failed, Status.FAILED)
    queued, queued_seq = await accept(store, storage, "web", ref="main", submitter="ann")
    other, _ = await accept(store, storage, "docs", build={"output": "site"})
    secret, secret_seq = await accept(store, storage, "docs", build={"command": "make"})
    await redis.flushall()

    done = await w.recoverer().run()

    assert done.aliases_restored == ["web"]
    assert (await Sites(redis, keys, events_max=100).live("web"))["id"] == v1
    assert await redis.get(keys.seq("web")) == str(queued_seq)
    assert await redis.get(keys.seq("docs")) == str(secret_seq)
    assert int(await redis.get(keys.fence("web"))) > fence
    assert sorted(done.jobs_requeued) == sorted([queued, other])
    assert done.jobs_failed == [secret]
    assert done.jobs_ended == 2
    # Re-queued on ingest, at their fair place, with their seq and fields.
    assert sorted(await redis.lrange(keys.ingest, 0, -1)) == sorted([queued, other])
    restored = await store.get(queued)
    assert restored is not None
    assert (restored.status, restored.seq, restored.ref, restored.submitter) == (
        Status.ACCEPTED,
        queued_seq,
        "main",
        "ann",
    )
    assert await redis.hget(keys.job(queued), "qscore") is not None
    assert (await store.get(other)).build == {"output": "site"}  # type: ignore[union-attr]
    # The job that needed its private command fails, saying why, and S3 keeps that.
    lost = await store.get(secret)
    assert lost is not None
    assert (lost.status, lost.error, lost.seq) == (Status.FAILED, OVERRIDE_LOST, secret_seq)
    data, _ = await storage.get(record_key(secret))
    assert json.loads(data)["status"] == "failed"
    # A new submission follows the highest recorded seq.
    assert await store.submit("f" * 20, service="web", repo_url="https://git.test/web") == (
        queued_seq + 1
    )


async def test_a_second_run_changes_nothing(w: World) -> None:
    redis, store, keys, storage, clock = w.redis, w.store, w.keys, w.storage, w.clock
    v1, seq1 = await accept(store, storage, "web")
    await go_live(w, "web", v1, seq1)
    await end(store, storage, v1, Status.LIVE)
    await accept(store, storage, "web")
    await redis.flushall()
    first = await w.recoverer().run()
    fence = await redis.get(keys.fence("web"))
    clock.advance(60)

    second = await w.recoverer().run()

    assert first.jobs_requeued
    assert first.aliases_restored
    assert first.fence_raised
    assert second == Recovery(
        aliases_current=1, seq_current=1, fence_current=1, jobs_in_redis=1, jobs_ended=1
    )
    assert await redis.get(keys.fence("web")) == fence
    assert await redis.llen(keys.ingest) == 1


async def test_on_a_healthy_redis_nothing_moves_and_no_fence_is_bumped(w: World) -> None:
    redis, store, keys, storage = w.redis, w.store, w.keys, w.storage
    v1, seq1 = await accept(store, storage, "web")
    await go_live(w, "web", v1, seq1)
    holder_fence = await redis.incr(keys.fence("web"))  # a deploy holding the lock now

    done = await w.recoverer().run()

    assert done == Recovery(aliases_current=1, seq_current=1, fence_current=1, jobs_in_redis=1)
    assert int(await redis.get(keys.fence("web"))) == holder_fence


async def test_a_newer_alias_or_higher_counter_in_redis_is_never_lowered(w: World) -> None:
    redis, store, keys, storage = w.redis, w.store, w.keys, w.storage
    v1, seq1 = await accept(store, storage, "web")
    await go_live(w, "web", v1, seq1)
    # Since the copy was written: a newer deploy went live and the counters moved on.
    v2, seq2 = await accept(store, storage, "web")
    await Sites(redis, keys, events_max=100).promote("web", v2, seq2)
    await redis.set(keys.seq("web"), 40)

    done = await w.recoverer().run()

    assert done.aliases_restored == []
    assert (await Sites(redis, keys, events_max=100).live("web"))["id"] == v2
    assert await redis.get(keys.seq("web")) == "40"


async def test_an_alias_whose_files_are_gone_is_not_restored(w: World) -> None:
    redis, store, keys, storage = w.redis, w.store, w.keys, w.storage
    v1, seq1 = await accept(store, storage, "web")
    await go_live(w, "web", v1, seq1)
    await storage.delete_keys([manifest_key(v1)])
    await storage.put_bytes(alias_key("junk"), b"not json", mime="application/json")
    await redis.flushall()

    done = await w.recoverer().run()

    assert done.aliases_files_gone == ["web"]
    assert await redis.exists(keys.site("web")) == 0
    assert await redis.get(keys.seq("web")) == str(seq1)  # the seq is restored all the same


async def test_a_stale_lock_holder_never_matches_the_restored_fence(w: World) -> None:
    redis, store, keys, storage = w.redis, w.store, w.keys, w.storage
    v1, seq1 = await accept(store, storage, "web")
    await go_live(w, "web", v1, seq1)
    stale, stale_seq = await accept(store, storage, "web")
    # Acquisitions after the last promotion are recorded nowhere in S3.
    for _ in range(5):
        stale_fence = int(await redis.incr(keys.fence("web")))
    await redis.flushall()
    await w.recoverer().run()
    sites = Sites(redis, keys, events_max=100)
    for _ in range(stale_fence):  # new holders take fences after the recovery
        await redis.incr(keys.fence("web"))

    result = await sites.promote("web", stale, stale_seq, fence=stale_fence)

    assert result.outcome is Verdict.FENCED
    assert (await sites.live("web"))["id"] == v1


def test_the_summary_has_a_count_line_per_category_then_what_changed() -> None:
    done = Recovery(aliases_restored=["web"], seq_raised={"web": 7}, jobs_failed=["a" * 20])

    lines = done.lines()

    assert lines[:4] == [
        "aliases: 1 restored, 0 already current, 0 not restored (files gone)",
        "seq counters: 1 raised, 0 already current",
        "fence counters: 0 raised, 0 already current",
        "jobs: 0 re-queued, 1 failed (build override lost), 0 still in Redis, 0 ended",
    ]
    assert lines[4:] == ["  alias restored: web", "  seq:web -> 7", f"  job failed: {'a' * 20}"]
