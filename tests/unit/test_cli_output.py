"""The read commands (status, queue, locks, claims) against a fake API: plain rows when
stdout is not a terminal, rich tables when it is, the API's JSON with ``--json``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from shared.cli import common, render
from shared.cli.client import Client
from shared.cli.main import main
from shared.coord.staging import Claim
from shared.core.clock import format_ms
from shared.engine.jobs import JobRecord

T0 = 1_700_000_000_000
JOB = {
    "id": "0000000000000000000a",
    "status": "live",
    "service": "site",
    "repo_url": "file:///srv/site",
    "ref": None,
    "root_dir": None,
    "commit": "abc123",
    "seq": 1,
    "created_at": T0,
    "updated_at": T0 + 3000,
    "ended_at": T0 + 3000,
    "attempts": 1,
    "worker": "deployer-h-1",
    "error": None,
    "url": "http://site.localhost:8001/",
    "dead": False,
    "phases": {
        "cloning": {"start": T0, "end": T0 + 1000, "duration_ms": 1000},
        "publishing": {"start": T0 + 3000, "end": None, "duration_ms": None},
    },
}
QUEUE = {
    "length": 2,
    "pending": ["0000000000000000000b", "0000000000000000000c"],
    "ingest": 0,
    "delayed": 1,
    "dead": 0,
    "paused": False,
    "active": {"deployer-h-1": ["0000000000000000000d"], "deployer-h-2": []},
    "workers": [
        {"id": "deployer-h-1", "kind": "deployer", "host": "h", "pid": 1, "slots": 2,
         "busy": 1, "version": "0.1", "heartbeat_age_ms": 120},
        {"id": "deployer-h-2", "kind": "deployer", "host": "h", "pid": 2, "slots": 2,
         "busy": 0, "version": "0.1", "heartbeat_age_ms": 80},
    ],
}  # fmt: skip
LOCKS = [
    {"service": "web", "owner": "carol", "host": "h", "pid": 1, "task": "manual", "fence": 7,
     "acquired_at": T0, "expires_at": T0 + 7_200_000, "reason": "qa\trelease"},
]  # fmt: skip
CLAIMS = [
    {"env": "staging", "owner": "carol", "branch": None, "claimed_at": T0, "expires_at": None,
     "user_id": None},
]  # fmt: skip
ROUTES: dict[str, Any] = {
    "/deployments": [JOB],
    f"/deployments/{JOB['id']}": JOB,
    "/queue": QUEUE,
    "/locks": LOCKS,
    "/staging": CLAIMS,
}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every ``Client`` the CLI makes answers from ``routes`` (edit it to change answers)."""
    routes = dict(ROUTES)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method != "GET":
            return httpx.Response(405, json={"error": {"message": "read only"}})
        if request.url.path not in routes:
            return httpx.Response(404, json={"error": {"message": "no such thing"}})
        return httpx.Response(200, json=routes[request.url.path])

    class FakeClient(Client):
        def __init__(self, base_url: str) -> None:
            super().__init__(base_url, token="")
            self.http.close()
            self.http = httpx.Client(base_url=base_url, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(common, "Client", FakeClient)
    return routes


def test_the_fake_answers_have_the_api_shapes() -> None:
    assert JobRecord.model_validate(JOB).model_dump(mode="json") == JOB | {
        "build": None,
        "ingest_attempts": 0,
        "retry_stage": None,
        "holder": None,
        "waiting_since": None,
    }
    assert Claim(**CLAIMS[0]).public() == CLAIMS[0]


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--api", "http://api.test"])


def test_status_lists_recent_jobs_one_plain_row_each(api: dict[str, Any]) -> None:
    result = _run("status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{JOB['id']}\tlive\tsite\t{format_ms(T0)}\tfile:///srv/site"
    ]


def test_status_of_one_job_shows_its_fields_then_its_phases(api: dict[str, Any]) -> None:
    result = _run("status", str(JOB["id"]))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"id\t{JOB['id']}", "status\tlive", "service\tsite"]
    assert "ref\t-" in lines
    assert "dead\tno" in lines
    assert f"created_at\t{format_ms(T0)}" in lines
    assert lines[-2:] == [
        f"phase\tcloning\t{format_ms(T0)}\t1000",
        f"phase\tpublishing\t{format_ms(T0 + 3000)}\t-",
    ]


def test_queue_prints_a_summary_then_pending_and_worker_rows(api: dict[str, Any]) -> None:
    result = _run("queue")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "queue 2  ingest 0  delayed 1  dead 0  paused no",
        "pending\t0000000000000000000b",
        "pending\t0000000000000000000c",
        "worker\tdeployer-h-1\tdeployer\t1/2\t120\t0000000000000000000d",
        "worker\tdeployer-h-2\tdeployer\t0/2\t80\t-",
    ]


def test_locks_and_claims_print_one_plain_row_each(api: dict[str, Any]) -> None:
    locks = _run("locks")
    claims = _run("claims")
    assert locks.stdout == f"web\tcarol\t7\t{format_ms(T0 + 7_200_000)}\tmanual\tqa release\n"
    assert claims.stdout == f"staging\tcarol\t-\t{format_ms(T0)}\tno expiry\n"


def test_nothing_to_list_prints_no_row_and_says_so_on_stderr(api: dict[str, Any]) -> None:
    api["/locks"] = []
    api["/staging"] = []
    api["/deployments"] = []
    for command, message in (
        ("locks", "no locks held"),
        ("claims", "no environment is claimed"),
        ("status", "no deployments yet"),
    ):
        result = _run(command)
        assert result.exit_code == 0
        assert result.stdout == ""
        assert result.stderr == f"{message}\n"


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["status"], "/deployments"),
        (["status", str(JOB["id"])], f"/deployments/{JOB['id']}"),
        (["queue"], "/queue"),
        (["locks"], "/locks"),
        (["claims"], "/staging"),
    ],
)
def test_json_prints_the_api_answer_as_is(api: dict[str, Any], args: list[str], path: str) -> None:
    result = _run(*args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == ROUTES[path]
    assert result.stderr == ""


def test_json_with_nothing_to_list_prints_an_empty_array(api: dict[str, Any]) -> None:
    api["/locks"] = []
    result = _run("locks", "--json")
    assert json.loads(result.stdout) == []
    assert result.stderr == ""


def test_an_api_error_is_a_clean_exit_1_in_every_mode(api: dict[str, Any]) -> None:
    for args in (["status", "ffffffffffffffffffff"], ["status", "ffffffffffffffffffff", "--json"]):
        result = _run(*args)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "404: no such thing" in result.stderr


def test_on_a_terminal_the_commands_draw_tables_with_headers(
    api: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    queue = _run("queue")
    locks = _run("locks")
    assert queue.exit_code == 0, queue.output
    assert "heartbeat ms" in queue.stdout
    assert "workers" in queue.stdout
    assert "─" in queue.stdout
    assert "\t" not in queue.stdout
    assert "service" in locks.stdout
    assert "qa release" in locks.stdout
    assert "\t" not in locks.stdout
    # --json stays JSON on a terminal too
    assert json.loads(_run("locks", "--json").stdout) == LOCKS
