"""Run a build command in its own process group, with a scrubbed environment,
resource limits and a timeout, streaming its output into the job's log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

from shared.logs import LogWriter

LAUNCHER = Path(__file__).with_name("_launch.py")
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
KILL_GRACE_S = 2.0
READ_CHUNK = 65536
MAX_PARTIAL_LINE = 16384


class BuildTimeout(Exception):
    """The build ran past its timeout and was killed."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits applied to the build process."""

    timeout_s: float
    cpu_s: int
    memory_bytes: int
    file_bytes: int


def build_env(home: Path, extra: Mapping[str, str], job: Mapping[str, str]) -> dict[str, str]:
    """The whole environment the build sees: an allowlist, never the daemon's secrets."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # The deployer's own interpreter directory first, so `python3` resolves to a
    # Python 3.11+ even on hosts whose system python3 is older.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.setdefault("LANG", "C.UTF-8")
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "CI": "true"})
    env.update(job)
    env.update(extra)
    return env


def _kill_group(process: Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def _stop(process: Process) -> None:
    """SIGTERM the whole group, SIGKILL it after a grace period, and reap."""
    with anyio.CancelScope(shield=True):
        _kill_group(process, signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE_S):
            await process.wait()
        _kill_group(process, signal.SIGKILL)
        await process.wait()


async def _pump(process: Process, log: LogWriter) -> None:
    assert process.stdout is not None
    partial = b""
    async for chunk in process.stdout:
        data = partial + chunk
        *lines, partial = data.split(b"\n")
        if len(partial) > MAX_PARTIAL_LINE:
            lines.append(partial)
            partial = b""
        for raw in lines:
            log.add(raw.decode("utf-8", "replace"))
        await log.flush()
    if partial:
        log.add(partial.decode("utf-8", "replace"))
    await log.flush()


async def run_build(
    command: str, cwd: Path, env: Mapping[str, str], limits: Limits, log: LogWriter
) -> int:
    """Run ``command`` with ``/bin/sh -c`` in ``cwd``; returns its exit status.

    Raises BuildTimeout after ``limits.timeout_s``. On timeout or cancellation the
    whole process group is terminated and reaped before this returns or re-raises.
    """
    argv = [
        sys.executable,
        "-I",
        "-S",
        str(LAUNCHER),
        str(limits.cpu_s),
        str(limits.memory_bytes),
        str(limits.file_bytes),
        command,
    ]
    process = await anyio.open_process(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with anyio.fail_after(limits.timeout_s):
            await _pump(process, log)
            status = await process.wait()
    except TimeoutError:
        await _stop(process)
        await log.close()
        raise BuildTimeout(f"build timed out after {limits.timeout_s:g}s") from None
    except BaseException:
        await _stop(process)
        raise
    # The shell is gone but a background child may still hold the group: end it.
    _kill_group(process, signal.SIGKILL)
    await log.close()
    return status
