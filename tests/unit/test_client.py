"""shared/cli/client.py: following a build log resumes where a dropped stream ended."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.cli import client as client_module
from shared.cli.client import Client


def _event(event_id: str, kind: str, text: str = "", status: str | None = None) -> str:
    data = json.dumps({"kind": kind, "text": text, "status": status})
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"


def test_follow_resumes_from_the_last_event_after_a_drop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module.time, "sleep", lambda _s: None)
    seen_ids: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/logs"):
            seen_ids.append(request.headers.get("last-event-id"))
            if len(seen_ids) == 1:  # dropped after two lines, before the end
                body = _event("1-0", "line", "one") + _event("2-0", "line", "two")
            else:
                body = _event("3-0", "line", "three") + _event("4-0", "end", status="live")
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": "j", "status": "building"})

    api = Client("http://api.test")
    api.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))

    entries = list(api.follow("j"))

    assert [e["text"] for e in entries if e["kind"] == "line"] == ["one", "two", "three"]
    assert entries[-1]["kind"] == "end"
    assert seen_ids == [None, "2-0"]


def test_follow_stops_when_the_stream_ends_and_the_job_has_ended() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, text="", headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": "j", "status": "live"})

    api = Client("http://api.test")
    api.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))

    assert list(api.follow("j")) == []
    assert calls == ["/deployments/j/logs", "/deployments/j"]
