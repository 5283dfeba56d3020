"""The CLI against real processes: `buildq deploy` and `buildq up --demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from shared.cli.embedded import free_ports
from tests.integration.helpers import Stack, fetch, make_repo

pytestmark = pytest.mark.integration

BUILDQ = [sys.executable, "-m", "shared.cli.main"]


def _cli(
    args: list[str], env: dict[str, str], timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUILDQ, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_buildq_deploy_shows_phases_and_log_and_prints_live_url(
    stack: Stack, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "cli-site",
        {
            "buildq.toml": '[build]\ncommand = "mkdir out && echo hello-cli | tee out/index.html"\n'
            'output = "out"\n'
        },
    )
    result = _cli(["deploy", f"file://{repo}", "--api", stack.url], stack.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    phases = [line[4:].split(" (")[0] for line in out.splitlines() if line.startswith("==> ")]
    assert phases == ["cloning", "uploading", "queued", "building", "publishing", "live"]
    assert "    hello-cli" in out
    assert f"live: http://cli-site.localhost:{stack.sites_port}/" in out
    assert stack.site("cli-site").text.strip() == "hello-cli"

    status = _cli(["status", "--api", stack.url], stack.env)
    assert "live" in status.stdout
    assert "cli-site" in status.stdout
    queue = _cli(["queue", "--api", stack.url], stack.env)
    assert queue.returncode == 0
    assert "deployer-" in queue.stdout
    rows = [line.split("\t") for line in queue.stdout.splitlines() if line.startswith("worker\t")]

    q = json.loads(_cli(["queue", "--json", "--api", stack.url], stack.env).stdout)
    assert {row[1] for row in rows} == {w["id"] for w in q["workers"]}
    assert "deployer" in {w["kind"] for w in q["workers"]}
    jobs = json.loads(_cli(["status", "--json", "--api", stack.url], stack.env).stdout)
    assert [(j["service"], j["status"]) for j in jobs] == [("cli-site", "live")]
    one = _cli(["status", jobs[0]["id"], "--json", "--api", stack.url], stack.env)
    record = json.loads(one.stdout)
    assert record["url"] == f"http://cli-site.localhost:{stack.sites_port}/"
    assert record["status"] == "live"
    assert list(record["phases"])[-1] == "publishing"
    plain = [line.split("\t") for line in status.stdout.splitlines()]
    assert [(row[0], row[1], row[2]) for row in plain] == [(jobs[0]["id"], "live", "cli-site")]
    fields = _cli(["status", jobs[0]["id"], "--api", stack.url], stack.env).stdout.splitlines()
    assert "status\tlive" in fields
    assert [line.split("\t")[1] for line in fields if line.startswith("phase\t")] == list(
        record["phases"]
    )


def test_buildq_deploy_prints_each_phase_with_its_elapsed_time_and_json_only_the_record(
    stack: Stack, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "cli-timed",
        {
            "buildq.toml": '[build]\ncommand = "mkdir out && echo built-line && sleep 1 '
            '&& echo done > out/index.html"\noutput = "out"\n'
        },
    )
    plain = _cli(["deploy", f"file://{repo}", "--api", stack.url], stack.env)
    as_json = _cli(["deploy", f"file://{repo}", "--json", "--api", stack.url], stack.env)

    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    timed = [re.fullmatch(r"==> (\w+) \((\d+\.\d)s\)", line) for line in lines]
    phases = [(m[1], float(m[2])) for m in timed if m]
    assert [name for name, _ in phases] == [
        "cloning", "uploading", "queued", "building", "publishing", "live"
    ]  # fmt: skip
    seconds = [s for _, s in phases]
    assert seconds == sorted(seconds)
    assert lines.index("==> " + "building" + f" ({seconds[3]}s)") < lines.index("    built-line")
    assert lines[-1] == f"live: http://cli-timed.localhost:{stack.sites_port}/"
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)  # nothing but the record on stdout
    assert (record["status"], record["service"]) == ("live", "cli-timed")
    assert record["url"] == f"http://cli-timed.localhost:{stack.sites_port}/"


def test_buildq_deploy_exits_nonzero_with_error_on_failure(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "cli-broken", {"buildq.toml": '[build]\ncommand = "exit 7"\n'})
    result = _cli(
        ["deploy", f"file://{repo}", "--service", "cli-broken", "--api", stack.url], stack.env
    )
    assert result.returncode == 1
    assert "failed: build exited with status 7" in result.stderr

    refused = _cli(["deploy", "ext::sh", "--api", stack.url], stack.env)
    assert refused.returncode == 1
    assert "422" in refused.stderr
    assert "remote-helper" in refused.stderr


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _up_demo(
    env: dict[str, str], data: Path, port: int, sites_port: int
) -> tuple[subprocess.Popen[str], list[str], str | None]:
    """``buildq up --demo`` until it says it is up: the process, its lines, the URL."""
    ports = ["--port", str(port), "--sites-port", str(sites_port)]
    proc = subprocess.Popen(
        [*BUILDQ, "up", "--demo", *ports, "--data-dir", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("live: "):
            url = line.split()[1]
        if line.startswith("buildq is up"):
            break
    return proc, lines, url


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.slow
def test_buildq_up_demo_serves_the_site_and_stops_every_child(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDQ_", "AWS_"))}
    port, sites_port = free_ports(2)
    data = tmp_path / "data"
    proc, lines, url = _up_demo(env, data, port, sites_port)
    try:
        assert url == f"http://demo.localhost:{sites_port}/", "".join(lines)
        assert f"dashboard       http://127.0.0.1:{port}/\n" in lines
        page = fetch(url)
        assert page.status_code == 200
        assert "Hello from buildq" in page.text
        assert page.headers["content-type"].startswith("text/html")
        assert fetch(f"{url}style.css").headers["content-type"].startswith("text/css")
        children = _descendants(proc.pid)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "valkey-server" in names
        assert "moto.server" not in names  # objects live in <data dir>/storage
        assert names.count("-m deployer") == 2
        assert "-m uploader" in names

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left running: {alive}"
        assert (data / "valkey" / "appendonlydir").is_dir()
        assert (data / "storage" / "buildq" / "manifests").is_dir()
        assert (data / "logs" / "uploader.log").is_file()
    finally:
        _end(proc)


@pytest.mark.slow
def test_buildq_up_uses_the_configured_redis_and_s3_and_embeds_nothing(
    bq_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDQ_")}
    env.update({k: v for k, v in bq_env.items() if k != "BUILDQ_WORK_DIR"})
    port, sites_port = free_ports(2)
    data = tmp_path / "data"
    proc, lines, url = _up_demo(env, data, port, sites_port)
    try:
        text = "".join(lines)
        assert url == f"http://demo.localhost:{sites_port}/", text
        assert f"redis           {bq_env['BUILDQ_REDIS_URL']}  (configured" in text
        assert f"S3              {bq_env['BUILDQ_S3_ENDPOINT_URL']}  (configured" in text
        assert "Hello from buildq" in fetch(url).text
        names = " ".join(" ".join(c.cmdline()) for c in _descendants(proc.pid))
        assert "valkey-server" not in names
        assert "moto.server" not in names
        assert not (data / "valkey").exists()
        assert not (data / "storage").exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        _end(proc)


@pytest.mark.slow
def test_buildq_up_restarts_its_valkey_and_the_queue_survives(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDQ_", "AWS_"))}
    port, sites_port = free_ports(2)
    ports = ["--port", str(port), "--sites-port", str(sites_port)]
    api = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*BUILDQ, "up", *ports, "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while not (line := proc.stdout.readline()).startswith("buildq is up"):
            assert line, "".join(lines)
            lines.append(line)
        assert httpx.put(f"{api}/fleet", json={"paused": True}).status_code == 200
        repo = make_repo(tmp_path / "survivor", {"index.html": "survived"})
        body = {"repo_url": f"file://{repo}", "service": "survivor"}
        job_id = httpx.post(f"{api}/deployments", json=body).json()["id"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{api}/deployments/{job_id}").json()["status"] != "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # appendfsync everysec: let the AOF catch up before the crash
        valkey = next(c for c in _descendants(proc.pid) if "valkey-server" in c.name())
        valkey.kill()
        assert "valkey exited with status -9; restarting it" in proc.stdout.readline()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{api}/deployments/{job_id}").json()["status"] == "queued":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, "the queued job did not survive"
            time.sleep(0.1)
        assert httpx.put(f"{api}/fleet", json={"paused": False}).status_code == 200
        while httpx.get(f"{api}/deployments/{job_id}").json()["status"] != "live":
            assert time.monotonic() < deadline, "the job did not go live after the restart"
            time.sleep(0.1)
        assert fetch(f"http://survivor.localhost:{sites_port}/").text == "survived"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
