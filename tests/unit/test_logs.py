"""shared/engine/logs.py: capped, batched log writing and reading back in order."""

from __future__ import annotations

import fakeredis
import pytest

from shared.engine.logs import MAX_LINE_CHARS, TAIL_LINES, LogEntry, LogWriter, read_log
from shared.redis.keys import Keys

pytestmark = pytest.mark.anyio

JOB = "0123456789abcdef0123"


def writer(redis: fakeredis.FakeAsyncRedis, keys: Keys, max_bytes: int = 1024) -> LogWriter:
    return LogWriter(redis, keys, JOB, max_bytes=max_bytes, max_entries=100_000)


async def texts(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> list[str]:
    return [e.text for e in await read_log(redis, keys, JOB)]


async def test_lines_are_sent_only_on_flush(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    w = writer(redis, keys)
    w.add("one\n")
    w.add("two\r\n")

    assert await texts(redis, keys) == []
    await w.flush()
    assert await texts(redis, keys) == ["one", "two"]
    await w.flush()  # nothing pending: nothing written twice
    assert await texts(redis, keys) == ["one", "two"]


async def test_line_sends_at_once(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    await writer(redis, keys).line("buildq: hello")

    entries = await read_log(redis, keys, JOB)

    assert [(e.kind, e.text) for e in entries] == [("line", "buildq: hello")]


async def test_output_beyond_max_bytes_keeps_a_bounded_tail_and_an_omitted_marker(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    w = writer(redis, keys, max_bytes=1024)
    lines = [f"{i:05d}" + "x" * 95 for i in range(1000)]  # 100 chars + newline each
    for line in lines:
        w.add(line)

    await w.close()

    got = await texts(redis, keys)
    head = 1024 // 101  # lines that fit the budget
    omitted = 1000 - head - TAIL_LINES
    assert got[:head] == lines[:head]
    assert got[head] == f"[... {omitted} lines ({omitted * 101} bytes) omitted ...]"
    assert got[head + 1 :] == lines[-TAIL_LINES:]
    assert len(got) == head + 1 + TAIL_LINES


async def test_small_overflow_writes_the_tail_without_a_marker(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    w = writer(redis, keys, max_bytes=1024)
    lines = [f"line {i:03d}" + "." * 91 for i in range(15)]
    for line in lines:
        w.add(line)

    await w.close()

    got = await texts(redis, keys)
    assert got == lines  # nothing was dropped, so nothing claims to be omitted
    assert not any("omitted" in t for t in got)


async def test_long_lines_are_truncated(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    w = writer(redis, keys, max_bytes=1024 * 1024)
    w.add("y" * (MAX_LINE_CHARS * 3))
    w.add("z" * MAX_LINE_CHARS)

    await w.close()

    got = await texts(redis, keys)
    assert got[0] == "y" * MAX_LINE_CHARS + " [line truncated]"
    assert got[1] == "z" * MAX_LINE_CHARS


async def test_read_log_returns_entries_in_order_with_kinds(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    await redis.xadd(keys.logs(JOB), {"kind": "phase", "status": "building", "at": "1"})
    w = writer(redis, keys)
    for i in range(5):
        w.add(f"line {i}")
    await w.flush()
    await redis.xadd(keys.logs(JOB), {"kind": "end", "status": "live", "at": "2"})

    entries = await read_log(redis, keys, JOB)

    assert [e.kind for e in entries] == ["phase"] + ["line"] * 5 + ["end"]
    assert [e.render() for e in entries] == [
        "==> building",
        *(f"line {i}" for i in range(5)),
        "==> live",
    ]
    assert [e.id for e in entries] == sorted(e.id for e in entries)


async def test_read_log_after_an_id_returns_only_later_entries(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    w = writer(redis, keys)
    for i in range(4):
        w.add(f"line {i}")
    await w.flush()
    first_two = (await read_log(redis, keys, JOB))[:2]

    rest = await read_log(redis, keys, JOB, after=first_two[-1].id)

    assert [e.text for e in rest] == ["line 2", "line 3"]


async def test_read_log_of_an_unknown_job_is_empty(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    assert await read_log(redis, keys, JOB) == []


def test_log_entry_renders_lines_verbatim_and_events_as_arrows() -> None:
    assert LogEntry("1-0", "line", "hello").render() == "hello"
    assert LogEntry("1-0", "phase", "", "publishing").render() == "==> publishing"
