"""Run a build command in a sandbox (see ``deployer/sandbox.py``), with a scrubbed
environment, resource limits and a timeout, streaming its output into the job's log.

Each build gets its own cgroup where the host allows (``deployer/limits.py``);
the group's OOM-kill count turns into BuildOutOfMemory. The build starts under
``deployer/_launch.py``, which joins that group, isolates it, applies the
rlimits and supervises the whole process tree as a child subreaper (inside a pid
namespace at the ``uid`` and ``bwrap`` levels). Stopping the launcher stops and
reaps every process of the build, including those that called ``setsid``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import ByteReceiveStream, Process

from deployer.limits import looks_out_of_memory
from deployer.sandbox import (
    LAUNCHER_ENV,
    LaunchLimits,
    Level,
    Sandbox,
    interpreter_prefix,
    launch_pipe,
    launcher_argv,
    prepare_workdir,
    reclaim_workdir,
)
from shared.core.cgroups import Group
from shared.core.errors import BuildError, ValidationError
from shared.core.redaction import SecretRedactor
from shared.engine.logs import MAX_LINE_CHARS, LogWriter
from shared.storage.digests import Digests

PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
# Where the host keeps its trusted CA certificates (paths, not secrets): with a TLS-
# intercepting proxy, `npm install` and pip fail in builds without them.
CA_ENV = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_CERT")
TERM_WAIT_S = 1.5  # the launcher's own kill-and-reap takes milliseconds
READ_CHUNK = 65536
MAX_PARTIAL_LINE = 16384
TAIL_BYTES = 256 * 1024  # raw output kept once the log's head is full
RECENT_BYTES = 8192  # output searched for an allocation failure (rlimit mode)
DEFAULT_SANDBOX = Sandbox(Level.PROCESS, network=True, max_procs=0)
NO_SECRETS = SecretRedactor(())


class BuildTimeout(BuildError):
    """The build ran past its timeout and was killed."""


class BuildOutOfMemory(BuildError):
    """The build hit its memory limit: the kernel killed it, or an allocation failed."""

    def __init__(self, memory_bytes: int) -> None:
        super().__init__(f"build ran out of memory (limit {memory_bytes // (1024 * 1024)} MiB)")


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits applied to the build process."""

    timeout_s: float
    cpu_s: int
    memory_bytes: int
    file_bytes: int


def build_env(
    home: Path,
    extra: Mapping[str, str],
    job: Mapping[str, str],
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment the build sees: an allowlist, never the daemon's secrets.

    ``extra`` is the build config's env; the service's ``secrets`` win over it (a
    repository cannot replace what the platform holds), ``job`` over both."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env.update({k: os.environ[k] for k in CA_ENV if os.environ.get(k, "").startswith("/")})
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # The deployer's interpreter installation (not its virtualenv) first, so
    # `python3` resolves to a Python 3.11+ even on hosts whose system python3 is
    # older; the uid and bwrap sandboxes make this directory visible read-only.
    env["PATH"] = f"{interpreter_prefix() / 'bin'}{os.pathsep}{env['PATH']}"
    env.setdefault("LANG", "C.UTF-8")
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "CI": "true"})
    env.update(extra)
    env.update(secrets or {})
    env.update(job)
    return env


def check_checkout(workdir: Path, cwd: Path) -> None:
    """Refuse a checkout the build replaced by a symlink (``ln -s / src``): the
    deployer reads the output through this path after the build, as itself."""
    current = workdir
    for part in cwd.relative_to(workdir).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISDIR(mode):
            raise ValidationError(
                f"the build replaced {current.relative_to(workdir)!s} with something "
                "other than a directory"
            )


async def _stop(process: Process) -> None:
    """Ask the launcher to kill and reap the whole tree; SIGKILL its group if it hangs."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(TERM_WAIT_S):
                await process.wait()
        if process.returncode is None:  # not reaped, so its group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


class _Tail:
    """Once the log's head is full: keep only the last TAIL_BYTES of raw output."""

    def __init__(self, redactor: SecretRedactor) -> None:
        self.redactor = redactor
        self.buffer = bytearray()
        self.dropped_bytes = 0
        self.dropped_lines = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        excess = len(self.buffer) - TAIL_BYTES
        if excess > 0:
            self.dropped_lines += self.buffer.count(b"\n", 0, excess)
            self.dropped_bytes += excess
            del self.buffer[:excess]

    def finish(self, log: LogWriter) -> None:
        lines = bytes(self.buffer).split(b"\n")
        if self.dropped_bytes and lines:
            first = lines.pop(0)  # the cut-off end of an omitted line
            self.dropped_bytes += len(first) + 1
        log.omitted_lines += self.dropped_lines
        log.omitted_bytes += self.dropped_bytes
        if lines and not lines[-1]:
            lines.pop()
        for raw in lines:
            redacted = self.redactor.redact(raw)
            log.add(redacted[: MAX_LINE_CHARS * 4].decode("utf-8", "replace"))


async def _pump(
    stream: ByteReceiveStream,
    log: LogWriter,
    recent: bytearray,
    redactor: SecretRedactor = NO_SECRETS,
) -> None:
    """Lines into the log while it has room; then only a bounded raw tail, so a
    build printing gigabytes costs constant memory and little CPU. ``recent``
    keeps the last RECENT_BYTES of output.

    Every line is redacted (``redactor``) before it reaches the log; a line cut
    for length keeps its last bytes back, so a secret is never split in two."""
    partial = b""
    tail: _Tail | None = None
    async for chunk in stream:
        recent += chunk[-RECENT_BYTES:]
        del recent[:-RECENT_BYTES]
        if tail is not None:
            tail.feed(chunk)
            continue
        data = partial + chunk
        *lines, partial = data.split(b"\n")
        if len(partial) > MAX_PARTIAL_LINE:
            now, partial = redactor.split(partial)
            if now:
                lines.append(now)
        for raw in lines:
            log.add(redactor.redact(raw).decode("utf-8", "replace"))
        await log.flush()
        if log.written_bytes > log.max_bytes - READ_CHUNK:
            tail = _Tail(redactor)
            tail.feed(partial)
            partial = b""
    if tail is not None:
        tail.finish(log)
    elif partial:
        log.add(redactor.redact(partial).decode("utf-8", "replace"))
    await log.flush()


async def run_build(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    limits: Limits,
    log: LogWriter,
    *,
    sandbox: Sandbox | None = None,
    workdir: Path | None = None,
    redactor: SecretRedactor = NO_SECRETS,
    digests: Digests | None = None,
) -> int:
    """Run ``command`` with ``/bin/sh -c`` in ``cwd``; returns its exit status
    (128 + N if signal N killed it).

    ``workdir`` (default ``cwd``) is the job directory the build may write; the
    sandbox (default: the ``process`` level) maps it into the build. Raises
    BuildTimeout after ``limits.timeout_s``, BuildOutOfMemory if the build ran out
    of memory, ValidationError if the build replaced its checkout directory.
    Output lines reach ``log`` only through ``redactor``. The source's ``digests``
    are carried across the workdir's change of owner, for the files the build left
    untouched. On
    timeout or cancellation the whole process tree is terminated and reaped (and
    its cgroup emptied and removed) before this returns or re-raises.
    """
    box = sandbox or DEFAULT_SANDBOX
    root = workdir or cwd
    recent = bytearray()
    with box.borrow() as uid:
        if uid is not None:
            await anyio.to_thread.run_sync(prepare_workdir, root, uid, digests)
        group = await box.limiter.start(
            env.get("BUILDQ_JOB_ID", "build"), limits.memory_bytes, box.max_procs or 0
        )
        try:
            status = await _launch(
                command,
                cwd=cwd,
                env=env,
                limits=limits,
                log=log,
                box=box,
                root=root,
                uid=uid,
                group=group,
                recent=recent,
                redactor=redactor,
            )
        finally:
            with anyio.CancelScope(shield=True):
                oom_kills = await box.limiter.finish(group)
                # Before the uid is released: the next build runs as it.
                await anyio.to_thread.run_sync(reclaim_workdir, root, uid, digests)
    await log.close()
    if oom_kills or (
        group is None and status != 0 and looks_out_of_memory(recent.decode("utf-8", "replace"))
    ):
        raise BuildOutOfMemory(limits.memory_bytes)
    await anyio.to_thread.run_sync(check_checkout, root, cwd)
    return status


async def _launch(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    limits: Limits,
    log: LogWriter,
    box: Sandbox,
    root: Path,
    uid: int | None,
    group: Group | None,
    recent: bytearray,
    redactor: SecretRedactor,
) -> int:
    """Start the launcher and pump its output until it exits; stop it on timeout
    or cancellation."""
    spec = box.spec(
        cwd=box.inside(cwd, root),
        workdir=root,
        uid=uid,
        limits=LaunchLimits(limits.cpu_s, limits.memory_bytes, limits.file_bytes, box.max_procs),
        cgroup_procs=group.procs_files if group is not None else (),
    )
    # The command and environment go on a pipe: never on the launcher's command
    # line (``ps``) nor in its environment (the loader would act on LD_PRELOAD).
    spec_fd = launch_pipe(spec, command, box.translate_env(env, root))
    try:
        process = await anyio.open_process(
            launcher_argv(spec_fd),
            cwd="/",
            env=LAUNCHER_ENV,
            pass_fds=(spec_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(spec_fd)
    try:
        with anyio.fail_after(limits.timeout_s):
            assert process.stdout is not None
            await _pump(process.stdout, log, recent, redactor)
            return await process.wait()
    except TimeoutError:
        await _stop(process)
        await log.close()
        raise BuildTimeout(f"build timed out after {limits.timeout_s:g}s") from None
    except BaseException:
        await _stop(process)
        raise
