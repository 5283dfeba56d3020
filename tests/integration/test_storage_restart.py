"""Durable embedded storage: a stack on a storage directory (no S3) is killed and
started again, and everything it published is still served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.cli.embedded import free_ports
from tests.integration.helpers import Stack, fetch, make_env, make_repo

pytestmark = pytest.mark.integration

BIG = bytes(range(256)) * 12_000  # ~3 MB: a blob of its own, streamed when served


def _kill(stack: Stack) -> None:
    """SIGKILL every process of the stack (and what they started); no drain."""
    for proc in stack.procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in stack.procs:
        proc.wait()


def _local_env(valkey_url: str, tmp_path: Path) -> dict[str, str]:
    env = make_env(valkey_url, "", tmp_path, BUILDQ_STORAGE_DIR=str(tmp_path / "storage"))
    del env["BUILDQ_S3_ENDPOINT_URL"]
    return env


@pytest.mark.slow
def test_a_killed_stack_on_a_storage_directory_serves_its_sites_after_a_restart(
    valkey_url: str, tmp_path: Path
) -> None:
    env = _local_env(valkey_url, tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    repo = make_repo(
        tmp_path / "repo",
        {"index.html": "<h1>kept</h1>", "css/site.css": "h1{}", "big.bin": BIG},
    )
    first = Stack(dict(env), logs).start(deployers=1, slots=2)
    try:
        job_id = first.deploy(repo, service="durable")
        assert first.wait(job_id)["status"] == "live"
        assert first.site("durable").text == "<h1>kept</h1>"
    finally:
        _kill(first)

    second = Stack(dict(env), logs).start(deployers=1, slots=2)
    try:
        record = httpx.get(f"{second.url}/deployments/{job_id}").json()
        assert record["status"] == "live"
        assert second.site("durable").text == "<h1>kept</h1>"
        css = second.site("durable", "css/site.css")
        assert (css.status_code, css.text) == (200, "h1{}")
        assert css.headers["content-type"].startswith("text/css")
        assert second.site("durable", "big.bin").content == BIG
        ranged = second.site("durable", "big.bin", headers={"Range": "bytes=10-19"})
        assert (ranged.status_code, ranged.content) == (206, BIG[10:20])
        assert second.preview(job_id).text == "<h1>kept</h1>"
        assert second.logs_text(job_id)
        # and the restarted stack still deploys
        again = second.deploy(repo, service="durable-2")
        assert second.wait(again)["status"] == "live"
    finally:
        second.stop()
    assert (tmp_path / "storage" / env["BUILDQ_S3_BUCKET"] / "manifests").is_dir()


@pytest.mark.slow
def test_buildq_up_keeps_published_sites_across_a_stop_and_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDQ_", "AWS_"))}
    data = tmp_path / "data"
    repo = make_repo(tmp_path / "site", {"index.html": "still here"})

    def up() -> tuple[subprocess.Popen[str], str, int]:
        port, sites_port = free_ports(2)
        argv = [str(Path(sys.executable).with_name("buildq")), "up", "--port", str(port)]
        argv += ["--sites-port", str(sites_port), "--data-dir", str(data)]
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        while not (line := proc.stdout.readline()).startswith("buildq is up"):
            assert line, "".join(lines)
            lines.append(line)
        assert any(line.startswith("storage ") for line in lines), "".join(lines)
        return proc, f"http://127.0.0.1:{port}", sites_port

    def down(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                assert proc.wait(60) == 0
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    proc, api, sites_port = up()
    try:
        body = {"repo_url": f"file://{repo}", "service": "kept"}
        job_id = httpx.post(f"{api}/deployments", json=body).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{api}/deployments/{job_id}").json()["status"] != "live":
            assert time.monotonic() < deadline, "the deploy did not go live"
            time.sleep(0.1)
    finally:
        down(proc)

    proc, api, sites_port = up()
    try:
        assert fetch(f"http://kept.localhost:{sites_port}/").text == "still here"
        assert httpx.get(f"{api}/deployments/{job_id}").json()["status"] == "live"
    finally:
        down(proc)
