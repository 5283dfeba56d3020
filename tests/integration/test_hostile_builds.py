"""Hostile builds through the real stack: the deployer's secrets stay out of the
published output, a timed-out build leaves no process behind, network off means no
connection, and the deployer says at start-up which isolation level it runs."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import psutil
import pytest

from tests.integration.helpers import Stack, fetch, make_repo
from tests.integration.test_hostile_http import module_stack
from tests.unit.test_hostile_urls import Listener

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "deployer-secret-" + uuid.uuid4().hex
EXPECTED_LEVEL = "bwrap" if os.geteuid() == 0 and shutil.which("bwrap") else None

DUMP = """
import glob, json, os
seen = {"env": dict(os.environ), "files": {}}
for pattern in ("/proc/*/environ", "/proc/*/cmdline", "/proc/%d/environ" % os.getppid()):
    for path in glob.glob(pattern):
        try:
            seen["files"][path] = open(path, "rb").read().decode("utf-8", "replace")
        except OSError as exc:
            seen["files"][path] = "unreadable: %s" % exc.strerror
os.makedirs("dist", exist_ok=True)
json.dump(seen, open("dist/seen.json", "w"))
"""


@pytest.fixture(scope="module")
def builds(
    valkey_url: str, s3_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {
        "AWS_SESSION_TOKEN": SECRET,
        "DEPLOYER_DATABASE_PASSWORD": SECRET,
        "BUILDQ_BUILD_TIMEOUT_S": "3",
    }
    yield from module_stack(valkey_url, s3_url, tmp_path_factory, extra)


@pytest.fixture(scope="module")
def offline(
    valkey_url: str, s3_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {"BUILDQ_BUILD_NETWORK": "off", "BUILDQ_BUILD_TIMEOUT_S": "20"}
    yield from module_stack(valkey_url, s3_url, tmp_path_factory, extra)


def sandbox_line(stack: Stack) -> dict[str, object]:
    for line in (stack.logs / "deployer-0.log").read_text().splitlines():
        if '"sandbox.' in line:
            return dict(json.loads(line))
    raise AssertionError("the deployer did not log its sandbox level")


def test_the_deployer_announces_its_isolation_level(builds: Stack, offline: Stack) -> None:
    for stack, network in ((builds, "on"), (offline, "off")):
        line = sandbox_line(stack)
        assert line["event"] in ("sandbox.ready", "sandbox.weak")
        if EXPECTED_LEVEL:
            assert line["sandbox"] == EXPECTED_LEVEL
        assert f"network {network}" in str(line["detail"])
        if line["sandbox"] == "process":
            assert line["event"] == "sandbox.weak"
            assert line["level"] == "warning"


def test_no_deployer_secret_reaches_the_published_output(builds: Stack, tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "snoop",
        {
            "dump.py": DUMP,
            "buildq.toml": '[build]\ncommand = "python3 dump.py"\noutput = "dist"\n',
        },
    )
    job_id = builds.deploy(repo, service="snoop")
    record = builds.wait(job_id)
    assert record["status"] == "live", builds.logs_text(job_id)
    raw = fetch(f"{record['url']}seen.json").text
    seen = json.loads(raw)
    assert seen["env"]["BUILDQ_JOB_ID"] == job_id
    assert seen["files"]  # the build did look around
    assert SECRET not in raw
    for name in ("AWS_SESSION_TOKEN", "AWS_SECRET_ACCESS_KEY", "BUILDQ_REDIS_URL"):
        assert name not in seen["env"]
        assert name not in raw


def test_a_timed_out_build_leaves_no_process_behind(builds: Stack, tmp_path: Path) -> None:
    marker = f"{5000 + uuid.uuid4().int % 1000}"
    command = (
        f"(setsid sh -c 'sleep {marker}' &); "
        f"(setsid sh -c 'trap \\\"\\\" TERM HUP; sleep {marker}; sleep {marker}' &); "
        f"nohup sleep {marker} >/dev/null 2>&1 & sleep 600"
    )
    repo = make_repo(
        tmp_path / "daemonize",
        {"index.html": "x", "buildq.toml": f'[build]\ncommand = "{command}"\noutput = "."\n'},
    )
    job_id = builds.deploy(repo, service="daemonize")
    record = builds.wait(job_id, timeout_s=60)
    assert record["status"] == "failed"
    assert "timed out after 3s" in record["error"]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        left = [
            p
            for p in psutil.process_iter(["cmdline"])
            if f"sleep {marker}" in " ".join(p.info["cmdline"] or [])
        ]
        if not left:
            break
        time.sleep(0.1)
    assert left == []


def connect_build(port: int) -> dict[str, str]:
    script = (
        "import socket, os\n"
        "os.makedirs('dist', exist_ok=True)\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "    result = 'CONNECTED'\n"
        "except OSError as exc:\n"
        "    result = 'REFUSED %s' % exc\n"
        "open('dist/index.html', 'w').write(result)\n"
    )
    return {
        "net.py": script,
        "buildq.toml": '[build]\ncommand = "python3 net.py"\noutput = "dist"\n',
    }


def test_network_off_builds_cannot_reach_host_services(
    builds: Stack, offline: Stack, tmp_path: Path
) -> None:
    listener = Listener()
    try:
        results = {}
        for name, stack in (("on", builds), ("off", offline)):
            repo = make_repo(tmp_path / f"net-{name}", connect_build(listener.port))
            record = stack.wait(stack.deploy(repo, service=f"net-{name}"))
            assert record["status"] == "live", stack.logs_text(record["id"])
            results[name] = fetch(record["url"]).text
        assert results["on"] == "CONNECTED"
        assert results["off"].startswith("REFUSED")
        assert len(listener.connections) == 1  # only from the network-on build
    finally:
        listener.close()


def test_a_build_cannot_publish_the_host_by_swapping_its_checkout(
    builds: Stack, tmp_path: Path
) -> None:
    command = "cd .. && rm -rf src && ln -s / src"
    repo = make_repo(
        tmp_path / "swap",
        {"index.html": "x", "buildq.toml": f'[build]\ncommand = "{command}"\noutput = "etc"\n'},
    )
    job_id = builds.deploy(repo, service="swap")
    record = builds.wait(job_id)
    assert record["status"] == "failed"
    assert "the build replaced src" in record["error"]
    assert builds.preview(job_id, "passwd").status_code == 404


def test_a_buildq_toml_asking_for_ld_preload_fails_the_job_clearly(
    builds: Stack, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "preload",
        {
            "index.html": "x",
            "buildq.toml": '[build]\ncommand = "true"\n[build.env]\nLD_PRELOAD = "/w/x.so"\n',
        },
    )
    record = builds.wait(builds.deploy(repo, service="preload"))
    assert record["status"] == "failed"
    assert "buildq.toml: LD_PRELOAD is a loader or interpreter variable" in record["error"]


def test_build_env_values_and_the_command_appear_in_no_record_log_or_s3_copy(
    builds: Stack, tmp_path: Path
) -> None:
    value = "env-value-" + uuid.uuid4().hex
    word = "cmd-word-" + uuid.uuid4().hex
    repo = make_repo(tmp_path / "secrets", {"index.html": "x"})
    build = {
        "command": f': {word}; test "$API_KEY" = {value} && mkdir -p out && echo ok > out/i',
        "output": "out",
        "env": {"API_KEY": value},
    }
    job_id = builds.deploy(repo, service="secrets", build=build)
    record = builds.wait(job_id)
    assert record["status"] == "live", builds.logs_text(job_id)  # the build got the value
    assert record["build"] == {"command": "***", "output": "out", "env": {"API_KEY": "***"}}
    answers = [
        httpx.get(f"{builds.url}/deployments/{job_id}").text,
        httpx.get(f"{builds.url}/deployments").text,
        builds.logs_text(job_id),
    ]
    assert "build from request (command hidden)" in answers[-1]
    s3 = boto3.client(
        "s3",
        endpoint_url=builds.env["BUILDQ_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=builds.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=builds.env["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = builds.env["BUILDQ_S3_BUCKET"]
    answers.append(s3.get_object(Bucket=bucket, Key=f"deployments/{job_id}.json")["Body"].read())
    answers += [p.read_text() for p in builds.logs.iterdir()]  # the daemons' own logs
    for answer in answers:
        text = answer.decode() if isinstance(answer, bytes) else answer
        assert value not in text
        assert word not in text
