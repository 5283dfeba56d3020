"""A whole ``buildq up`` for a benchmark: start it on free ports, deploy through its
API, find its processes, and stop everything it started by PID (also after Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import psutil

from shared.cli.embedded import EMBEDDED_AWS_ENV, free_port, free_ports, start_moto, stop_process

START_TIMEOUT_S = 90
DEPLOY_TIMEOUT_S = 600
POLL_S = 0.02
ENDED = ("live", "failed", "cancelled", "superseded")
# The benchmark submits more than a person would: no per-identity rate limit.
BENCH_ENV = {"BUILDQ_SUBMIT_RATE_PER_MIN": "0"}


class BenchError(RuntimeError):
    """The stack or a deployment did not do what the benchmark needs."""


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@dataclass
class Deployment:
    """One finished deployment: its record and the client-side POST→live time."""

    id: str
    status: str
    post_to_live_s: float
    phases_s: dict[str, float]
    error: str | None = None

    def phase(self, name: str) -> float:
        if name not in self.phases_s:
            raise BenchError(f"deployment {self.id} has no {name!r} phase: {self.phases_s}")
        return self.phases_s[name]


@dataclass
class BenchStack:
    """One running ``buildq up`` and the processes it started."""

    proc: subprocess.Popen[bytes]
    api: str
    redis_url: str
    s3_url: str
    data_dir: Path
    output: list[str] = field(default_factory=list)
    known: dict[int, psutil.Process] = field(default_factory=dict)
    moto: subprocess.Popen[bytes] | None = None  # the S3 server started for it, if any

    def children(self, module: str) -> list[psutil.Process]:
        """The live children of ``buildq up`` whose command line runs ``module``."""
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if module in cmdline or any(module in part for part in cmdline[:2]):
                found.append(child)
        return found

    def deployers(self) -> list[psutil.Process]:
        return [p for p in self.children("deployer") if "-m" in p.cmdline()]

    def valkey(self) -> psutil.Process:
        for child in psutil.Process(self.proc.pid).children():
            if "valkey" in child.name() or "redis" in child.name():
                return child
        raise BenchError("buildq up has no valkey-server child")

    def remember_children(self) -> None:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            self.known[child.pid] = child

    def stop(self) -> None:
        """SIGINT to ``buildq up`` (it drains and stops its children), then SIGKILL by
        PID whatever it started that is still there."""
        with contextlib.suppress(psutil.Error):
            self.remember_children()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for child in self.known.values():
            try:
                if child.is_running():
                    child.kill()
            except psutil.Error:
                pass
        if self.moto is not None:
            stop_process(self.moto)


def start_stack(
    data_dir: Path,
    *,
    deployers: int = 2,
    environ: Mapping[str, str] | None = None,
    storage: str = "moto",
) -> BenchStack:
    """``buildq up`` with embedded valkey on free ports and, by ``storage``, a moto S3
    server started here ("moto": comparable with the AWS CLI on the same server) or
    ``buildq up``'s own local directory ("local"); returns once it is up."""
    port, sites_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDQ_", "AWS_"))}
    env.update(BENCH_ENV)
    env.update(environ or {})
    moto = None
    if storage == "moto":
        data_dir.mkdir(parents=True, exist_ok=True)
        s3_port = free_port()
        with (data_dir / "moto.log").open("ab") as log:
            moto = start_moto(s3_port, log=log)
        env.update(EMBEDDED_AWS_ENV)
        env["BUILDQ_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{s3_port}"
    argv = [
        str(Path(sys.executable).with_name("buildq")), "up", "--port", str(port),
        "--sites-port", str(sites_port), "--data-dir", str(data_dir),
        "--deployers", str(deployers),
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    except BaseException:
        if moto is not None:
            stop_process(moto)
        raise
    stack = BenchStack(
        proc, f"http://127.0.0.1:{port}", "", env.get("BUILDQ_S3_ENDPOINT_URL", ""), data_dir
    )
    stack.moto = moto
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # keep draining, so the child never blocks on a full pipe
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if line.startswith("buildq is up"):
                up.set()
        up.set()

    threading.Thread(target=read, daemon=True).start()
    try:  # also on Ctrl-C while it starts: stop what was started
        if not up.wait(START_TIMEOUT_S) or proc.poll() is not None:
            raise BenchError("buildq up did not start:\n" + "\n".join(lines[-20:]))
        stack.output = lines
        for line in lines:
            if match := re.match(r"valkey-server\s+(127\.0\.0\.1:\d+)", line):
                stack.redis_url = f"redis://{match.group(1)}/0"
        if not stack.redis_url:
            raise BenchError("buildq up did not say where valkey is:\n" + "\n".join(lines))
    except BaseException:
        stack.stop()
        raise
    stack.remember_children()
    return stack


def s3_environ() -> dict[str, str]:
    """Credentials the embedded moto server accepts (for boto3 and the AWS CLI)."""
    return dict(EMBEDDED_AWS_ENV)


def post(client: httpx.Client, api: str, repo: Path, service: str) -> str:
    body = {"repo_url": f"file://{repo}", "service": service}
    response = client.post(f"{api}/deployments", json=body)
    if response.status_code != 202:
        raise BenchError(f"POST /deployments: {response.status_code} {response.text}")
    job_id: str = response.json()["id"]
    return job_id


def wait_ended(
    client: httpx.Client, api: str, job_id: str, timeout_s: float = DEPLOY_TIMEOUT_S
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        record: dict[str, object] = client.get(f"{api}/deployments/{job_id}").json()
        if record.get("status") in ENDED:
            return record
        if time.monotonic() > deadline:
            raise BenchError(f"deployment {job_id} still {record.get('status')} after {timeout_s}s")
        time.sleep(POLL_S)


def deploy(client: httpx.Client, api: str, repo: Path, service: str) -> Deployment:
    """POST ``repo`` and wait until the job has ended; raise unless it is live."""
    started = time.perf_counter()
    job_id = post(client, api, repo, service)
    record = wait_ended(client, api, job_id)
    took = time.perf_counter() - started
    raw_phases = record.get("phases") or {}
    assert isinstance(raw_phases, dict)
    phases = {
        name: phase["duration_ms"] / 1000
        for name, phase in raw_phases.items()
        if phase.get("duration_ms") is not None
    }
    error = record.get("error")
    deployment = Deployment(job_id, str(record["status"]), took, phases, str(error or ""))
    if deployment.status != "live":
        raise BenchError(
            f"deployment {job_id} of {service}: {deployment.status}: {deployment.error}"
        )
    return deployment
