"""A service's secrets reach its builds and nowhere else: the build gets the value
(it publishes only its SHA-256), while no API answer, log file, S3 object or
process command line holds it, nor its base64; a secret the deployer cannot
decrypt fails the job, clearly, before the build runs."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from cryptography.fernet import Fernet

from shared.redis.keys import Keys
from tests.integration.faults import redis_client
from tests.integration.helpers import Stack, make_repo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SERVICE = "secretive"
SECRET = "pk_live_" + "Zq7" * 9 + "-x!"  # shell-safe inside double quotes
BUILD_SH = """\
set -e
mkdir -p out
echo '<p>ok</p>' > out/index.html
printf '%s' "$MY_SECRET" | sha256sum | cut -d' ' -f1 > out/digest.txt
echo "plain: $MY_SECRET"
printf '%s' "$MY_SECRET" | base64
echo "$MY_SECRET" | base64
python3 -c 'import os,sys; sys.stdout.write("x" * 70000 + os.environ["MY_SECRET"] + "\\n")'
echo "build-waiting-for-scan"
i=0
while [ ! -e "$HOME/../go" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
echo done
"""
BUILDQ_TOML = '[build]\ncommand = "sh build.sh"\noutput = "out"\n'


def forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw).rstrip(b"="), base64.b64encode(raw[:27])]


def leaks(data: bytes | str) -> list[bytes]:
    blob = data.encode() if isinstance(data, str) else data
    return [f for f in forms(SECRET) if f in blob]


def wait_for_line(stack: Stack, job_id: str, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in stack.logs_text(job_id):
            return
        record = httpx.get(f"{stack.url}/deployments/{job_id}").json()
        assert record["status"] not in ("failed", "cancelled"), record
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log of {job_id}")


def command_lines() -> list[bytes]:
    found = []
    for proc in psutil.process_iter():
        try:
            found.append(b"\0".join(a.encode() for a in proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def events_text(stack: Stack) -> str:
    """The whole events stream as the API serves it (it follows: read until quiet)."""
    chunks: list[str] = []
    try:
        with httpx.stream(
            "GET", f"{stack.url}/events?after=0-0", timeout=httpx.Timeout(3.0)
        ) as response:
            assert response.status_code == 200
            for chunk in response.iter_text():
                chunks.append(chunk)
    except httpx.ReadTimeout:
        pass
    return "".join(chunks)


def redis_value(client: Any, key: str) -> Any:
    """Whatever ``key`` holds, read by its type."""
    kind = client.type(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "zset":
        return client.zrange(key, 0, -1)
    if kind == "stream":
        return client.xrange(key)
    if kind == "set":
        return sorted(client.smembers(key))
    return client.get(key)


def test_a_secret_reaches_the_build_and_nowhere_else(
    secret_stack: Stack, tmp_path: Path, s3_client: Any
) -> None:
    stack = secret_stack
    api = stack.url
    repo = make_repo(tmp_path / "repo", {"buildq.toml": BUILDQ_TOML, "build.sh": BUILD_SH})
    registered = httpx.put(f"{api}/services/{SERVICE}", json={"repo_url": f"file://{repo}"})
    assert registered.status_code == 201, registered.text
    put = httpx.put(f"{api}/services/{SERVICE}/secrets/MY_SECRET", json={"value": SECRET})
    assert put.status_code == 200, put.text
    assert leaks(put.text) == []

    job_id = stack.deploy(repo, service=SERVICE)
    wait_for_line(stack, job_id, "build-waiting-for-scan")
    running = command_lines()  # the build is blocked: its processes are all there
    assert any(b"build.sh" in c for c in running)  # scanned while the build ran
    (workdir,) = Path(stack.env["BUILDQ_WORK_DIR"]).glob(f"*/{job_id}")  # <worker>/<job>
    (workdir / "go").touch()
    record = stack.wait(job_id)
    assert record["status"] == "live", record

    # The build received the value: it published the value's digest.
    digest = stack.site(SERVICE, "digest.txt").text.strip()
    assert digest == hashlib.sha256(SECRET.encode()).hexdigest()

    log_text = stack.logs_text(job_id)
    assert "plain: ***" in log_text
    assert "with the service's secrets MY_SECRET" in log_text
    answers = {
        "record": httpx.get(f"{api}/deployments/{job_id}").text,
        "logs": log_text,
        "logs-sse": httpx.get(
            f"{api}/deployments/{job_id}/logs", headers={"Accept": "text/event-stream"}, timeout=30
        ).text,
        "deployments": httpx.get(f"{api}/deployments?service={SERVICE}").text,
        "service": httpx.get(f"{api}/services/{SERVICE}").text,
        "services": httpx.get(f"{api}/services").text,
        "secrets": httpx.get(f"{api}/services/{SERVICE}/secrets").text,
        "queue": httpx.get(f"{api}/queue").text,
        "events": events_text(stack),
    }
    assert "MY_SECRET" in answers["secrets"]
    assert job_id in answers["events"]
    assert "x" * 1000 in answers["logs"]
    assert {name: leaks(text) for name, text in answers.items()} == {n: [] for n in answers}
    assert [c for c in running if leaks(c)] == []

    for log_file in stack.logs.iterdir():
        assert leaks(log_file.read_bytes()) == [], log_file.name

    bucket = stack.env["BUILDQ_S3_BUCKET"]
    keys = [
        obj["Key"]
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    assert f"logs/{job_id}.jsonl" in keys
    assert f"deployments/{job_id}.json" in keys
    for key in keys:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert leaks(body) == [], key
    archived = s3_client.get_object(Bucket=bucket, Key=f"logs/{job_id}.jsonl")["Body"].read()
    assert b"plain: ***" in archived

    # Redis holds the value only sealed.
    client = redis_client(stack.env)
    try:
        ns = Keys(stack.env["BUILDQ_NAMESPACE"])
        for key in client.scan_iter(match=ns.prefix + "*", count=1000):
            assert leaks(json.dumps(redis_value(client, key), default=str)) == [], key
    finally:
        client.close()


def test_a_secret_sealed_under_another_key_fails_the_build_before_it_runs(
    secret_stack: Stack, tmp_path: Path
) -> None:
    stack = secret_stack
    marker = tmp_path / "ran"
    command = f"touch {marker}; mkdir -p out; echo hi > out/index.html"
    repo = make_repo(
        tmp_path / "repo", {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'}
    )
    ns = Keys(stack.env["BUILDQ_NAMESPACE"])
    foreign = Fernet(Fernet.generate_key()).encrypt(SECRET.encode()).decode()
    client = redis_client(stack.env)
    try:
        client.hset(ns.secrets(SERVICE), "OLD_KEY", json.dumps({"token": foreign, "updated_at": 1}))
    finally:
        client.close()

    job_id = stack.deploy(repo, service=SERVICE)
    record = stack.wait(job_id)

    assert record["status"] == "failed"
    assert "cannot decrypt secret OLD_KEY" in record["error"]
    assert "BUILDQ_SECRETS_KEY" in record["error"]
    assert record["attempts"] == 1  # permanent: not retried
    assert not marker.exists()
    assert stack.site(SERVICE).status_code == 404  # nothing went live
