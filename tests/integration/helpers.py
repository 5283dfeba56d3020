"""Helpers for integration tests: git repositories, processes, waiting on jobs."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.cli.demo_repo import GIT_IDENTITY
from shared.cli.embedded import free_ports, wait_for_port

TERMINAL = {"live", "failed", "cancelled", "superseded"}


def make_env(valkey_url: str, s3_url: str, work: Path, **extra: str) -> dict[str, str]:
    """Environment for buildq processes: a fresh namespace and bucket on the shared servers."""
    from shared.cli.embedded import EMBEDDED_AWS_ENV

    tag = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDQ_")}
    env.update(EMBEDDED_AWS_ENV)
    env.update(
        {
            "BUILDQ_REDIS_URL": valkey_url,
            "BUILDQ_S3_ENDPOINT_URL": s3_url,
            "BUILDQ_S3_BUCKET": f"t-{tag}",
            "BUILDQ_NAMESPACE": f"t{tag}",
            "BUILDQ_ALLOW_LOCAL_REPOS": "true",
            "BUILDQ_WORK_DIR": str(work / "work"),
            "BUILDQ_LOG_JSON": "true",
            "BUILDQ_GRACE_PERIOD_S": "5",
            # Fault tests submit hundreds of jobs a minute; the limit has its own tests.
            "BUILDQ_SUBMIT_RATE_PER_MIN": "0",
            **extra,
        }
    )
    return env


def fetch(url: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
    """Request a site URL such as ``http://svc.localhost:PORT/x``.

    Browsers resolve every ``*.localhost`` name to the loopback address; glibc does
    not, so connect to 127.0.0.1 and send the site's name as the Host header.
    """
    parsed = httpx.URL(url)
    headers = dict(kwargs.pop("headers", {}))
    if parsed.host.endswith(".localhost"):
        headers.setdefault("Host", f"{parsed.host}:{parsed.port}")
        parsed = parsed.copy_with(host="127.0.0.1")
    return httpx.request(method, parsed, headers=headers, **kwargs)


def make_repo(path: Path, files: Mapping[str, str | bytes], *, branch: str = "main") -> Path:
    """A one-commit git repository at ``path`` holding ``files``."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, "utf-8")
    env = {**os.environ, **GIT_IDENTITY}
    for argv in (
        ["git", "init", "--quiet", f"--initial-branch={branch}"],
        ["git", "add", "--all"],
        ["git", "commit", "--quiet", "--message", "test"],
    ):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return path


def spawn(module: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` in its own session, output to ``log``."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


@dataclass
class Stack:
    """An uploader and deployers as real processes, for one test module."""

    env: dict[str, str]
    logs: Path
    port: int = 0
    sites_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.port or not self.sites_port:
            self.port, self.sites_port = free_ports(2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of ``BUILDQ_API_TOKEN`` (none in local mode)."""
        token = self.env.get("BUILDQ_API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def start(self, deployers: int = 1, slots: int = 2) -> Stack:
        self.env["BUILDQ_PORT"] = str(self.port)
        self.env["BUILDQ_SITES_PORT"] = str(self.sites_port)
        self.env["BUILDQ_API_URL"] = self.url
        self.procs.append(spawn("uploader", self.env, self.logs / "uploader.log"))
        for index in range(deployers):
            self.add_deployer(slots, index)
        wait_for_port(self.port, 30, self.procs[0])
        return self

    def add_deployer(self, slots: int, index: int = 0) -> subprocess.Popen[bytes]:
        env = {**self.env, "BUILDQ_DEPLOYER_SLOTS": str(slots)}
        proc = spawn("deployer", env, self.logs / f"deployer-{index}.log")
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            stop(proc)

    def deploy(self, repo: Path | str, **fields: Any) -> str:
        url = repo if isinstance(repo, str) else f"file://{repo}"
        response = httpx.post(
            f"{self.url}/deployments", json={"repo_url": url, **fields}, headers=self.auth
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def wait(self, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
        """Poll the job until it ends (tests may poll; the product never does)."""
        deadline = time.monotonic() + timeout_s
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            record = httpx.get(f"{self.url}/deployments/{job_id}", headers=self.auth).json()
            if record.get("status") in TERMINAL:
                return record
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not end within {timeout_s}s: {record}")

    def site(self, service: str, path: str = "", **kwargs: Any) -> httpx.Response:
        """GET ``path`` of ``service``'s live site on its own origin."""
        return fetch(f"http://{service}.localhost:{self.sites_port}/{path}", **kwargs)

    def preview(self, job_id: str, path: str = "", **kwargs: Any) -> httpx.Response:
        """GET ``path`` of one deployment's preview on its own origin."""
        return fetch(f"http://{job_id}.preview.localhost:{self.sites_port}/{path}", **kwargs)

    def logs_text(self, job_id: str) -> str:
        return httpx.get(f"{self.url}/deployments/{job_id}/logs", headers=self.auth).text


@contextmanager
def running_stack(
    env: dict[str, str], tmp_path: Path, *, deployers: int = 1, slots: int = 2
) -> Iterator[Stack]:
    """A :class:`Stack` on ``env``, its logs under ``tmp_path / "logs"``, stopped after."""
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(env, logs).start(deployers=deployers, slots=slots)
    try:
        yield running
    finally:
        running.stop()


def github_delivery(
    url: str, payload: Mapping[str, Any], *, secret: str, delivery: str, event: str = "push"
) -> httpx.Response:
    """POST ``payload`` to ``url``'s ``/hooks/github`` as GitHub would: signed with
    ``secret`` (``X-Hub-Signature-256``), with its event and delivery id."""
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
    }
    return httpx.post(f"{url}/hooks/github", content=body, headers=headers)
