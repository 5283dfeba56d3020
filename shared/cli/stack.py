"""``buildq up``: run the whole stack as supervised child processes.

An embedded valkey-server starts when no Redis is configured; with no S3 either,
objects live in ``<data dir>/storage`` (:mod:`shared.storage.localdir`), as durable
as valkey's append-only file. The uploader and N deployers run as
``python -m uploader`` / ``python -m deployer``. Every child runs in its own
session; stopping sends SIGTERM to the services first (they drain), then to valkey
(it flushes its append-only file), and SIGKILLs whatever outlives its grace period.
All data lives under one directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

import httpx

from shared.cli.childenv import service_env
from shared.cli.embedded import free_port, start_valkey, stop_process, wait_for_port
from shared.core.errors import ConfigError

SERVICE_STOP_TIMEOUT_S = 35.0
MAX_RESTARTS_PER_MIN = 5


def port_is_free(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    """One supervised process, how to start it again, and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    restart: Callable[[], subprocess.Popen[bytes]]
    log: IO[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


@dataclass
class Stack:
    """The processes of one ``buildq up``."""

    data_dir: Path
    port: int
    deployers: int
    sites_port: int = 8001
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    infra: list[Child] = field(default_factory=list)
    services: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    embedded_aws: dict[str, str] | None = None  # the children's AWS_* (None: the user's)
    stop_requested: bool = False
    say: Callable[[str], None] = print

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _log(self, name: str) -> IO[bytes]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return (logs / f"{name}.log").open("ab")

    def start(self, say: Callable[[str], None] = print) -> None:
        """Start infrastructure and services; returns once the API is ready."""
        self.say = say
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not port_is_free(self.port):
            raise ConfigError(f"port {self.port} is already in use; pass --port")
        if self.sites_port == self.port or not port_is_free(self.sites_port):
            raise ConfigError(f"port {self.sites_port} is already in use; pass --sites-port")
        env = dict(self.environ)
        embedded = False
        if env.get("BUILDQ_REDIS_URL") or env.get("BUILDQ_REDIS_SENTINELS"):
            say(f"redis           {describe_redis(env)}  (configured: nothing embedded)")
        else:
            port = free_port()
            log = self._log("valkey")

            def valkey(port: int = port, log: IO[bytes] = log) -> subprocess.Popen[bytes]:
                return start_valkey(self.data_dir / "valkey", port, log=log)

            self.infra.append(Child("valkey", valkey(), valkey, log))
            env["BUILDQ_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            embedded = True
            say(f"valkey-server   127.0.0.1:{port}  (append-only file in {self.data_dir}/valkey)")
        if env.get("BUILDQ_S3_ENDPOINT_URL"):
            say(f"S3              {env['BUILDQ_S3_ENDPOINT_URL']}  (configured: nothing embedded)")
        else:
            storage = Path(env.get("BUILDQ_STORAGE_DIR") or self.data_dir / "storage")
            env["BUILDQ_STORAGE_DIR"] = str(storage.resolve())
            self.embedded_aws = {}  # no cloud credentials for children that use none
            embedded = True
            say(f"storage         {env['BUILDQ_STORAGE_DIR']}  (a local directory, no S3)")
        if embedded:
            env.setdefault("BUILDQ_ALLOW_LOCAL_REPOS", "true")
        env["BUILDQ_PORT"] = str(self.port)
        env["BUILDQ_SITES_PORT"] = str(self.sites_port)
        env["BUILDQ_API_URL"] = self.api_url
        env.setdefault("BUILDQ_WORK_DIR", str((self.data_dir / "work").resolve()))
        env.setdefault("BUILDQ_LOG_JSON", "true")
        self.env = env
        self._spawn("uploader", "uploader")
        for index in range(self.deployers):
            self._spawn(f"deployer-{index + 1}", "deployer")
        wait_for_port(self.port, 30, self.services[0].proc)
        self._wait_ready(30)
        logs = self.data_dir / "logs"
        say(f"uploader API    {self.api_url}  ({self.deployers} deployers; logs in {logs})")
        domain = env.get("BUILDQ_SITES_DOMAIN", "localhost")
        say(f"sites           http://<service>.{domain}:{self.sites_port}/")

    def _spawn(self, name: str, module: str) -> None:
        log = self._log(name)

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", module],
                env=service_env(self.env, module, embedded_aws=self.embedded_aws),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        self.services.append(Child(name, start(), start, log))

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            self.check_children()
            try:
                response = httpx.get(f"{self.api_url}/readyz", timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise ConfigError(f"uploader not ready after {timeout_s:g}s: {last}")

    def check_children(self) -> None:
        """Raise ConfigError if any child has exited."""
        for child in [*self.infra, *self.services]:
            if child.proc.poll() is not None:
                raise ConfigError(
                    f"{child.name} exited with status {child.proc.returncode}; "
                    f"see {self.data_dir}/logs/{child.name}.log"
                )

    def stop(self) -> None:
        """Stop services (they drain), then infrastructure; nothing is left running."""
        for child in self.services:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SERVICE_STOP_TIMEOUT_S
        for child in self.services:
            stop_process(child.proc, max(0.1, deadline - time.monotonic()))
        for child in reversed(self.infra):
            stop_process(child.proc, 10)
        for child in [*self.services, *self.infra]:
            if child.log is not None:
                child.log.close()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _: FrameType | None) -> None:
            self.stop_requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def wait(self) -> None:
        """Supervise until SIGINT/SIGTERM: a child that dies is started again (valkey
        on the same port and append-only file, so the queue survives); one that keeps
        dying stops the stack with ConfigError."""
        while not self.stop_requested:
            for child in [*self.infra, *self.services]:
                if child.proc.poll() is not None and not self.stop_requested:
                    self._restart(child)
            time.sleep(0.2)

    def _restart(self, child: Child) -> None:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60]
        if len(child.restarts) >= MAX_RESTARTS_PER_MIN:
            raise ConfigError(
                f"{child.name} keeps exiting (status {child.proc.returncode}); "
                f"see {self.data_dir}/logs/{child.name}.log"
            )
        child.restarts.append(now)
        self.say(f"{child.name} exited with status {child.proc.returncode}; restarting it")
        child.proc = child.restart()


def describe_redis(env: Mapping[str, str]) -> str:
    """The configured Redis as ``buildq up`` names it: no password, the topology."""
    if env.get("BUILDQ_REDIS_SENTINELS"):
        service = env.get("BUILDQ_REDIS_SENTINEL_SERVICE", "")
        return f"sentinels {env['BUILDQ_REDIS_SENTINELS']} (service {service or '?'})"
    parts = urlsplit(env["BUILDQ_REDIS_URL"])
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
    cluster = env.get("BUILDQ_REDIS_CLUSTER", "").lower() in ("1", "true", "yes", "on")
    return f"{where} (cluster seed)" if cluster else where
