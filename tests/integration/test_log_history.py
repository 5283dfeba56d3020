"""A finished job's build log outlives Redis: the same text, and the same SSE events,
after its stream key (and then its whole record) is deleted."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shared.redis.keys import Keys
from tests.integration.faults import redis_client
from tests.integration.helpers import Stack, make_repo

pytestmark = pytest.mark.integration

SSE = {"Accept": "text/event-stream"}


def test_a_finished_jobs_log_is_served_from_s3_once_redis_forgot_it(
    stack: Stack, tmp_path: Path
) -> None:
    command = "echo one; echo two; mkdir -p out; echo hi > out/index.html"
    repo = make_repo(
        tmp_path / "r", {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'}
    )
    job_id = stack.deploy(repo, service="history")
    assert stack.wait(job_id)["status"] == "live"
    logs = f"{stack.url}/deployments/{job_id}/logs"
    text = httpx.get(logs).text
    events = httpx.get(logs, headers=SSE, timeout=30).text
    assert "one\ntwo\n" in text
    assert "event: end" in events

    keys = Keys(stack.env["BUILDQ_NAMESPACE"])
    client = redis_client(stack.env)
    try:
        client.delete(keys.logs(job_id))  # the stream expired
        assert httpx.get(logs).text == text
        assert httpx.get(logs, headers=SSE, timeout=30).text == events
        client.delete(keys.job(job_id))  # and then the record
        assert httpx.get(logs).text == text
    finally:
        client.close()
    assert httpx.get(f"{stack.url}/deployments/ffffffffffffffffffff/logs").status_code == 404
