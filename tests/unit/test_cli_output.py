"""The read commands (status, queue, locks, claims) against a fake API: plain rows when
stdout is not a terminal, rich tables when it is, the API's JSON with ``--json``."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from shared.cli import common, progress, render
from shared.cli import main as cli_main
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
        "submitter": None,
        "priority": "normal",
        "superseded_by": None,
        "served_by": None,
        "secrets_of": None,
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


# -- buildq deploy: the live phase line, plain phase lines, --json ---------------------

DEPLOY_ID = "0000000000000000000e"
PHASES = ("cloning", "uploading", "queued", "building", "publishing")


def sse(entries: list[dict[str, Any]]) -> bytes:
    """A job's log stream as the API sends it (``GET /deployments/{id}/logs``)."""
    events = []
    for n, entry in enumerate(entries, start=1):
        data = json.dumps({"text": "", "status": None} | entry)
        events.append(f"id: {n}-0\nevent: {entry['kind']}\ndata: {data}\n\n")
    return "".join(events).encode()


def run_log(end: str = "live") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for phase in PHASES:
        entries.append({"kind": "phase", "status": phase})
        if phase == "building":
            entries += [{"kind": "line", "text": "npm run build"}, {"kind": "line", "text": "ok"}]
    return [*entries, {"kind": "end", "status": end}]


@pytest.fixture
def deploy_api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``buildq deploy`` against a fake API: edit ``log`` and ``record`` to change it."""
    state: dict[str, Any] = {
        "log": run_log(),
        "record": JOB | {"id": DEPLOY_ID, "status": "live"},
        "submitted": [],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/deployments":
            state["submitted"].append(json.loads(request.content))
            return httpx.Response(202, json={"id": DEPLOY_ID, "service": "site"})
        if path == f"/deployments/{DEPLOY_ID}/logs":
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, content=sse(state["log"]), headers=headers)
        if path == f"/deployments/{DEPLOY_ID}":
            return httpx.Response(200, json=state["record"])
        return httpx.Response(404, json={"error": {"message": "no such thing"}})

    class FakeClient(Client):
        def __init__(self, base_url: str) -> None:
            super().__init__(base_url, token="")
            self.http.close()
            self.http = httpx.Client(base_url=base_url, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(cli_main, "Client", FakeClient)
    return state


class Ticks:
    """A clock that moves one second per reading."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Still:
    """A clock that moves only when told (the live view's refresh thread reads it too)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_deploy_view_prints_phases_in_order_with_elapsed_then_url_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = progress.PlainProgress(clock=Ticks())
    with view:
        progress.follow(run_log(), view)
        code = view.finish(JOB)

    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert code == 0
    assert lines == [
        "==> cloning (1.0s)",
        "==> uploading (2.0s)",
        "==> queued (3.0s)",
        "==> building (4.0s)",
        "    npm run build",
        "    ok",
        "==> publishing (5.0s)",
        "==> live (6.0s)",
        "live: http://site.localhost:8001/",
    ]
    assert out.err == ""


def test_a_failed_or_cancelled_deploy_ends_with_its_error_on_stderr_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed = JOB | {"status": "failed", "error": "build exited with status 7", "url": None}
    cancelled = JOB | {"status": "cancelled", "error": None}
    assert progress.PlainProgress(clock=Ticks()).finish(failed) == 1
    assert progress.PlainProgress(clock=Ticks()).finish(cancelled) == 1
    superseded = JOB | {"status": "superseded", "url": "http://x.preview.localhost:8001/"}
    assert progress.PlainProgress(clock=Ticks()).finish(superseded) == 0

    out = capsys.readouterr()
    assert out.err.splitlines() == [
        "failed: build exited with status 7",
        "cancelled: no error recorded",
    ]
    assert (
        out.out == "superseded by a newer deployment; preview: http://x.preview.localhost:8001/\n"
    )


def test_log_lines_from_a_build_reach_the_terminal_without_control_characters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = progress.PlainProgress(clock=Ticks())
    view.line("\x1b]0;owned\x07red\x1b[31m\tdone")  # a window title, a colour
    view.line("")
    view.line("\x1b[36mvite v8.4.0 \x1b[32mbuilding\x1b[39m\x1b[0m")  # what vite prints
    view.line("\x1b[2K\x1b[1G")  # only cursor moves: an empty line
    view.line("bell\x07 \x9b31m c1 \x1b]8;;http://e.example\x1b\\link\x1b]8;;\x1b\\ \x1bM")
    assert capsys.readouterr().out == (
        "    red done\n    \n    vite v8.4.0 building\n    \n    bell\ufffd \ufffd31m c1 link \n"
    )


def test_the_live_view_redraws_one_phase_line_and_keeps_phases_and_log_above(
    capsys: pytest.CaptureFixture[str],
) -> None:
    screen, errors = io.StringIO(), io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    clock = Still()
    view = progress.LiveProgress(
        console, clock, errors=Console(file=errors, force_terminal=True, color_system=None)
    )
    with view:
        clock.now += 0.5
        view.phase("cloning")
        clock.now += 2.0
        first = _rendered(view)
        view.phase("building")
        view.line("step 1\x1b[2J")
        clock.now += 3.7
        line = _rendered(view)
        view.phase("live")
        code = view.finish(JOB)

    out = screen.getvalue()
    assert code == 0
    assert first.endswith(" cloning · 2.5s")  # spinner, phase, time since submission
    assert line.endswith(" building · 6.2s")
    assert "✓ cloning    2.0s" in out
    assert "  step 1\n" in out  # the build's clear-screen never reaches the terminal
    assert "[2J" not in out
    assert "✓ building   " in out
    assert out.index("✓ cloning") < out.index("step 1") < out.index("live: http://site")
    assert errors.getvalue() == ""
    assert capsys.readouterr().out == ""  # all of it went to the view's console


def _rendered(view: progress.LiveProgress) -> str:
    """The live line as it would be drawn now."""
    probe = Console(file=io.StringIO(), width=100, color_system=None)
    with probe.capture() as captured:
        probe.print(view.__rich__())
    return captured.get().strip()


def test_the_live_view_shows_a_failure_in_red_on_stderr() -> None:
    screen, errors = io.StringIO(), io.StringIO()
    view = progress.LiveProgress(
        Console(file=screen, force_terminal=True, color_system=None),
        Ticks(),
        errors=Console(file=errors, force_terminal=True, color_system=None),
    )
    with view:
        view.phase("building")
        code = view.finish(JOB | {"status": "failed", "error": "exit 2"})

    assert code == 1
    assert "failed: exit 2" in errors.getvalue()
    assert "failed" not in screen.getvalue()


def test_buildq_deploy_in_a_pipe_prints_plain_phase_lines_the_log_and_the_url(
    deploy_api: dict[str, Any],
) -> None:
    result = _run("deploy", "https://github.com/t/site.git", "--service", "site")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {DEPLOY_ID} accepted (service site)"
    phases = [line[4:].split(" (")[0] for line in lines if line.startswith("==> ")]
    assert phases == [*PHASES, "live"]
    assert all(re.fullmatch(r"==> \w+ \(\d+\.\ds\)", ln) for ln in lines if ln.startswith("==>"))
    assert lines.index("    npm run build") < lines.index(next(ln for ln in lines if "publ" in ln))
    assert lines[-1] == "live: http://site.localhost:8001/"
    assert deploy_api["submitted"] == [
        {"repo_url": "https://github.com/t/site.git", "service": "site"}
    ]


def test_buildq_deploy_json_prints_only_the_final_record(deploy_api: dict[str, Any]) -> None:
    result = _run("deploy", "https://github.com/t/site.git", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == deploy_api["record"]
    assert result.stderr == ""


def test_buildq_deploy_exits_1_with_the_error_when_the_job_fails(
    deploy_api: dict[str, Any],
) -> None:
    deploy_api["log"] = run_log(end="failed")
    deploy_api["record"] = deploy_api["record"] | {"status": "failed", "error": "exit 7"}

    plain = _run("deploy", "https://github.com/t/site.git")
    as_json = _run("deploy", "https://github.com/t/site.git", "--json")

    assert plain.exit_code == 1
    assert plain.stderr == "failed: exit 7\n"
    assert "live:" not in plain.stdout
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["status"] == "failed"
    assert as_json.stderr == "failed: exit 7\n"


def test_buildq_deploy_on_a_terminal_draws_the_live_view(
    deploy_api: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main, "stdout_is_terminal", lambda: True)
    result = _run("deploy", "https://github.com/t/site.git")

    assert result.exit_code == 0, result.output
    assert "✓ cloning" in result.stdout
    assert "npm run build" in result.stdout
    assert "==>" not in result.stdout
    assert "live: http://site.localhost:8001/" in result.stdout


def test_rounds_that_find_the_lock_still_held_are_not_shown_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def phase(status: str) -> dict[str, str]:
        return {"kind": "phase", "status": status}

    recheck = [phase("queued"), phase("building"), phase("waiting")]
    entries = [
        phase("queued"),
        phase("building"),
        {"kind": "line", "text": "buildq: site is locked by ada (freeze); waiting"},
        phase("waiting"),
        *recheck * 50,  # the lock stays held
        phase("queued"),
        phase("building"),
        {"kind": "line", "text": "buildq: fetched source"},
        phase("publishing"),
        {"kind": "end", "status": "live"},
    ]
    progress.follow(entries, progress.PlainProgress(clock=lambda: 100.0))

    phases = [line for line in capsys.readouterr().out.splitlines() if line.startswith("==>")]
    assert [p.split()[1] for p in phases] == [
        "queued",
        "building",
        "waiting",
        "queued",  # the round that got the lock, shown when it got further
        "building",
        "publishing",
        "live",
    ]


def test_a_job_that_ends_while_waiting_shows_its_end() -> None:
    seen: list[str] = []

    class Recorder:
        def phase(self, status: str) -> None:
            seen.append(status)

        def line(self, text: str) -> None:
            seen.append(f"line {text}")

    progress.follow(
        [
            {"kind": "phase", "status": "waiting"},
            {"kind": "phase", "status": "queued"},
            {"kind": "end", "status": "cancelled"},
        ],
        Recorder(),  # type: ignore[arg-type]
    )
    assert seen == ["waiting", "queued", "cancelled"]
