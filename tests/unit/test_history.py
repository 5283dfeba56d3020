"""shared/engine/history.py: an ended job's record and log copied to S3 (moto), and the
log read back the same way once Redis no longer has it."""

from __future__ import annotations

import fakeredis
import pytest

from shared.core.settings import Settings, load_settings
from shared.engine.history import archived_log, decode, encode, keep_ended, log_key
from shared.engine.jobs import JobStore, Status
from shared.engine.logs import LogWriter, read_log
from shared.redis.keys import Keys
from shared.storage.s3 import S3Storage, Storage, make_s3_client, record_key

pytestmark = pytest.mark.anyio

JOB = "0123456789abcdef0123"


@pytest.fixture
async def storage(aws: None) -> Storage:
    settings: Settings = load_settings({"BUILDQ_S3_BUCKET": "unit-history"})
    storage = S3Storage(make_s3_client(settings), settings.s3_bucket, concurrency=4)
    await storage.ensure_bucket()
    return storage


async def test_an_ended_job_keeps_its_record_and_whole_log_in_s3(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, storage: Storage
) -> None:
    await store.submit(JOB, service="site", repo_url="https://h/o/site")
    writer = LogWriter(redis, keys, JOB, max_bytes=1 << 20, max_entries=1000)
    for n in range(3):
        writer.add(f'line {n} with \\ and "quotes" and ünïcode')
    await writer.close()
    ended = await store.transition(JOB, Status.FAILED, ack=keys.ingest, fetch=True, error="boom")
    in_redis = await read_log(redis, keys, JOB)

    await keep_ended(redis, keys, storage, ended.record)

    assert await archived_log(storage, JOB) == in_redis
    assert next(e.text for e in in_redis if e.kind == "line").startswith("line 0 with \\")
    kept, _ = await storage.get(record_key(JOB))
    assert b'"status":"failed"' in kept
    after = in_redis[1].id
    assert await archived_log(storage, JOB, after=after) == in_redis[2:]


async def test_nothing_archived_is_none_and_hostile_archives_are_refused(storage: Storage) -> None:
    assert await archived_log(storage, JOB) is None
    for bad, why in (
        (b"[1, 2]\n", "not a log archive entry"),
        (b'{"id": 1, "kind": "line", "text": "x"}\n', "not a log archive entry"),
        (b"not json\n", "Expecting value"),
    ):
        with pytest.raises(ValueError, match=why):
            decode(bad)
    with pytest.raises(ValueError, match="not a job id"):
        log_key("../../sites/x")
    assert decode(encode([])) == []


async def test_keeping_an_ended_job_never_raises_when_redis_is_gone(
    redis: fakeredis.FakeAsyncRedis, keys: Keys, store: JobStore, storage: Storage
) -> None:
    await store.submit(JOB, service="site", repo_url="https://h/o/site")
    ended = await store.transition(JOB, Status.FAILED, ack=keys.ingest, fetch=True, error="x")
    server = redis.connection_pool.connection_kwargs["server"]
    server.connected = False  # the primary died between the job's end and this hook

    await keep_ended(redis, keys, storage, ended.record)

    kept, _ = await storage.get(record_key(JOB))  # the record went to S3 all the same
    assert b'"status":"failed"' in kept
    assert await archived_log(storage, JOB) is None
