"""``GET /events`` (uploader/events.py) over the process's one stream reader
(uploader/loghub.py), on fakeredis: a job's phase events arrive in order, and a
client that reconnects with Last-Event-ID misses nothing and sees nothing twice."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import fakeredis
import pytest

from shared.core.settings import Settings
from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from uploader.events import follow, latest_id, sse_event, start_from, trimmed_past
from uploader.loghub import HubFull, LogHub, StreamEntry

pytestmark = pytest.mark.anyio
JOB = "e" * 20
PHASES = (Status.CLONING, Status.UPLOADING, Status.QUEUED, Status.BUILDING, Status.PUBLISHING)


class Client:
    """The route's view of a request: connected until ``leave()``."""

    def __init__(self) -> None:
        self.gone = False

    async def is_disconnected(self) -> bool:
        return self.gone

    def leave(self) -> None:
        self.gone = True


def parse(event: str) -> tuple[str, str, dict[str, str]]:
    """(id, event name, data) of one SSE event."""
    lines = dict(line.split(": ", 1) for line in event.strip().splitlines())
    return lines["id"], lines["event"], json.loads(lines["data"])


async def take(stream: AsyncIterator[str], count: int) -> list[tuple[str, str, dict[str, str]]]:
    """The next ``count`` events (keep-alives skipped); fails rather than hangs."""
    out = []
    with anyio.fail_after(10):
        async for chunk in stream:
            if chunk.startswith("id: "):
                out.append(parse(chunk))
                if len(out) == count:
                    break
    return out


async def run_job(store: JobStore, statuses: tuple[Status, ...]) -> None:
    for status in statuses:
        await store.transition(JOB, status)


async def test_a_jobs_phase_events_arrive_in_order(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings
) -> None:
    store = JobStore(redis, keys, settings)
    start = await latest_id(redis, keys.events)
    subscription = await hub.follow_events(start)
    client = Client()
    stream = follow(redis, keys.events, subscription, start, client)  # type: ignore[arg-type]

    await store.submit(JOB, service="web", repo_url="https://example.com/web.git")
    await run_job(store, (*PHASES, Status.LIVE))
    events = await take(stream, 1 + len(PHASES) + 1)
    client.leave()
    subscription.close()

    assert [name for _, name, _ in events] == ["job"] * 7
    assert [data["status"] for _, _, data in events] == [
        "accepted",
        *(s.value for s in PHASES),
        "live",
    ]
    assert {data["id"] for _, _, data in events} == {JOB}
    ids = [i for i, _, _ in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_reconnecting_with_the_last_id_resumes_without_gaps(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings
) -> None:
    store = JobStore(redis, keys, settings)
    start = await latest_id(redis, keys.events)
    await store.submit(JOB, service="web", repo_url="https://example.com/web.git")
    await run_job(store, PHASES[:2])

    first = await hub.follow_events(start)
    client = Client()
    seen = await take(follow(redis, keys.events, first, start, client), 2)  # type: ignore[arg-type]
    client.leave()
    first.close()
    # While disconnected, the job moves on; then the client comes back.
    await run_job(store, (*PHASES[2:], Status.LIVE))
    last_id = seen[-1][0]
    second = await hub.follow_events(last_id)
    again = Client()
    resumed = await take(
        follow(redis, keys.events, second, last_id, again),  # type: ignore[arg-type]
        5,
    )
    again.leave()
    second.close()

    everything = [str(i) for i, _ in await redis.xrange(keys.events, "(" + start, "+")]
    assert [i for i, _, _ in seen + resumed] == everything
    assert [d["status"] for _, _, d in seen + resumed] == [
        "accepted",
        *(s.value for s in PHASES),
        "live",
    ]


async def test_a_follower_joining_behind_another_gets_every_entry(
    hub: LogHub, redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    for n in range(5):
        await redis.xadd(keys.events, {"kind": "job", "id": JOB, "status": f"s{n}"})
    ahead = await hub.follow_events(await latest_id(redis, keys.events))
    behind = await hub.follow_events("0-0")
    await redis.xadd(keys.events, {"kind": "job", "id": JOB, "status": "s5"})

    with anyio.fail_after(10):
        got_ahead = await ahead.receive()
        got_behind: list[StreamEntry] = []
        while len(got_behind) < 6:
            got_behind += await behind.receive()
    ahead.close()
    behind.close()

    assert [e.fields["status"] for e in got_ahead] == ["s5"]
    assert [e.fields["status"] for e in got_behind] == [f"s{n}" for n in range(6)]


async def test_a_trimmed_cursor_is_reported(redis: fakeredis.FakeAsyncRedis, keys: Keys) -> None:
    first = await redis.xadd(keys.events, {"kind": "job"})
    await redis.xadd(keys.events, {"kind": "job"})
    assert not await trimmed_past(redis, keys.events, str(first))

    await redis.xtrim(keys.events, maxlen=1, approximate=False)

    assert await trimmed_past(redis, keys.events, str(first))
    assert not await trimmed_past(redis, keys.events, "0-0")


def test_the_cursor_comes_from_last_event_id_then_after() -> None:
    assert start_from("5-1", "3-0") == "5-1"
    assert start_from(None, "3-0") == "3-0"
    assert start_from("junk", "3-0") == "3-0"
    assert start_from("1-0\nevent: x", None) is None


def test_event_names_and_data_cannot_break_the_stream() -> None:
    entry = StreamEntry("1-0", {"kind": "job\n\ndata: x", "reason": "a\n\nid: 9-9"})

    event = sse_event(entry)

    assert event.count("\n\n") == 1
    assert event.startswith("id: 1-0\nevent: jobdatax\ndata: ")
    assert json.loads(event.split("data: ", 1)[1])["reason"] == "a\n\nid: 9-9"


async def test_the_process_own_followers_do_not_count_against_the_cap(
    redis: fakeredis.FakeAsyncRedis, keys: Keys
) -> None:
    hub = LogHub(make_reader=lambda: redis, redis=redis, keys=keys, max_followers=1)
    own = await hub.follow_events("0-0", internal=True)
    client = await hub.follow_events("0-0")

    with pytest.raises(HubFull):
        await hub.follow(JOB, "0")
    assert hub.count == 1
    own.close()
    client.close()


@pytest.mark.parametrize(
    ("last_event_id", "after", "expected"),
    [
        (None, None, None),
        ("17-3", None, "17-3"),
        (" 17-3 ", "9-9", "17-3"),
        ("garbage", "9-9", "9-9"),
        ("1-1; DROP", None, None),
        ("\u0661-\u0661", None, None),  # Arabic-Indic digits are no stream id
        ("-", "+", None),
        ("9" * 30 + "-1", None, None),  # past what a stream id can be
    ],
)
def test_a_resume_cursor_is_a_stream_id_or_now(
    last_event_id: str | None, after: str | None, expected: str | None
) -> None:
    assert start_from(last_event_id, after) == expected
