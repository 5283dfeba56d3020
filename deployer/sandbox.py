"""Which isolation a build gets, and the launcher command that applies it.

Three levels, strongest first (``docs/SECURITY.md`` has the threat model):

- ``bwrap``: bubblewrap with its own user, pid, ipc, uts, cgroup and (network off)
  net namespaces, a read-only minimal root and only the job directory writable;
  as root, also a separate unprivileged uid per build.
- ``uid``: root without a working bubblewrap: a separate unprivileged uid per
  build, own pid, mount, ipc, uts (and net) namespaces, private ``/tmp``.
- ``process``: the deployer's own uid; only the allowlisted environment, rlimits
  and a subreaper that kills the whole tree. A build can read the deployer's
  ``/proc/<pid>/environ`` and files: the start-up log warns.

``auto`` picks the strongest level that a probe build shows working here. The
chosen sandbox also carries the resource-limits mechanism (``deployer/limits.py``:
a cgroup per build, or rlimits), probed and announced separately.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import marshal
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

import anyio.to_thread
import structlog

from deployer.limits import RLIMIT_ONLY, BuildLimiter
from deployer.limits import probe as probe_limits
from shared.core.errors import CapacityError, ConfigError
from shared.core.settings import Settings
from shared.storage.digests import Digests

log = structlog.get_logger("sandbox")

LAUNCHER = Path(__file__).with_name("_launch.py")
# Where the job directory appears inside uid and bwrap sandboxes: their /tmp is a
# private tmpfs, so this is not a shared temporary path.
MOUNT = "/tmp/buildq"  # noqa: S108
PROBE_TIMEOUT_S = 20.0
# The launcher's whole environment. The build's own environment travels in the
# launch spec and is applied only where the build shell starts, inside the sandbox:
# no LD_PRELOAD, GCONV_PATH or the like ever reaches the launcher or bubblewrap.
LAUNCHER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032


class Level(StrEnum):
    """Build isolation levels, strongest first."""

    BWRAP = "bwrap"
    UID = "uid"
    PROCESS = "process"


DESCRIPTION = {
    Level.BWRAP: "bubblewrap namespaces, read-only root, only the job directory writable",
    Level.UID: "separate uid per build, own pid/mount/ipc namespaces, private /tmp",
    Level.PROCESS: "deployer's own uid: env allowlist, rlimits, process-tree kill only",
}


class UidPool:
    """Unprivileged uids for builds, one per running build across processes (flock)."""

    def __init__(self, base: int, count: int, lock_dir: Path) -> None:
        self.base = base
        self.count = count
        self.lock_dir = lock_dir

    @contextlib.contextmanager
    def borrow(self) -> Iterator[int]:
        """Hold a uid no other build on this host holds, until the block ends."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for uid in range(self.base, self.base + self.count):
            fd = os.open(self.lock_dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)
            return
        raise CapacityError(
            f"all {self.count} build uids from {self.base} are in use; raise BUILDQ_BUILD_UID_COUNT"
        )


def _lock_dir() -> Path:
    run_lock = Path("/run/lock")
    base = run_lock if run_lock.is_dir() and os.access(run_lock, os.W_OK) else None
    return (base or Path(tempfile.gettempdir())) / "buildq-uids"


def interpreter_prefix() -> Path:
    """The Python installation builds get on PATH (not the deployer's venv)."""
    return Path(sys.base_prefix).resolve()


@dataclass(frozen=True)
class Sandbox:
    """A probed isolation level and what it needs to launch a build."""

    level: Level
    network: bool
    max_procs: int
    uids: UidPool | None = None
    bwrap: str | None = None
    disable_userns: bool = True
    tmpfs_bytes: int = 256 * 1024 * 1024
    expose: tuple[str, ...] = field(default_factory=tuple)
    limiter: BuildLimiter = RLIMIT_ONLY  # cgroup or rlimit (``deployer/limits.py``)

    def describe(self) -> str:
        net = "on" if self.network else "off"
        return f"{self.level.value} ({DESCRIPTION[self.level]}; network {net})"

    @contextlib.contextmanager
    def borrow(self) -> Iterator[int | None]:
        """The uid a build runs as (None: the deployer's own), held for the build."""
        if self.uids is None:
            yield None
            return
        with self.uids.borrow() as uid:
            yield uid

    def inside(self, path: Path, workdir: Path) -> str:
        """``path`` (under ``workdir``) as the build sees it."""
        if self.level is Level.PROCESS:
            return str(path)
        rel = path.resolve().relative_to(workdir.resolve())
        return MOUNT if str(rel) == "." else f"{MOUNT}/{rel}"

    def translate_env(self, env: Mapping[str, str], workdir: Path) -> dict[str, str]:
        """The environment with host paths of the job directory rewritten."""
        if self.level is Level.PROCESS:
            return dict(env)
        host = str(workdir.resolve())
        return {k: v.replace(host, MOUNT) for k, v in env.items()}

    def spec(
        self,
        *,
        cwd: str,
        workdir: Path,
        uid: int | None,
        limits: LaunchLimits,
        cgroup_procs: Sequence[str] = (),
    ) -> str:
        """The launcher's JSON spec for one build; ``cgroup_procs``: the build
        group's ``cgroup.procs`` files (none: RLIMIT_DATA caps memory instead)."""
        return json.dumps(
            {
                "level": self.level.value,
                "cwd": cwd,
                "workdir": str(workdir.resolve()),
                "mount": MOUNT,
                "uid": uid,
                "network": self.network,
                "bwrap": self.bwrap,
                "disable_userns": self.disable_userns,
                "expose": list(self.expose),
                "tmpfs_bytes": self.tmpfs_bytes,
                "cpu_s": limits.cpu_s,
                "data_bytes": 0 if cgroup_procs else limits.memory_bytes,
                "cgroup_procs": list(cgroup_procs),
                "fsize_bytes": limits.file_bytes,
                "nproc": limits.max_procs,
            }
        )


@dataclass(frozen=True, slots=True)
class LaunchLimits:
    """The rlimits the launcher applies."""

    cpu_s: int
    memory_bytes: int
    file_bytes: int
    max_procs: int | None


def prepare_workdir(workdir: Path, uid: int | None, digests: Digests | None = None) -> None:
    """Hand the job directory to the build's uid (only regular files and dirs exist),
    carrying the source's ``digests`` across the change of owner."""
    if uid is None:
        return
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            _chown(os.path.join(root, name), uid, uid, digests)
    os.lchown(workdir, uid, uid)
    workdir.chmod(0o700)
    if digests is not None:
        digests.seal(workdir)  # before the build starts


def reclaim_workdir(workdir: Path, uid: int | None, digests: Digests | None = None) -> None:
    """Hand the job directory back to the deployer's uid after the build (blocking).

    Called while the build's uid is still borrowed and every process of the build is
    gone: once it is given back, the next build runs as that uid and could otherwise
    rewrite this job's output while the deployer publishes it. Links are never
    followed; a hard-linked file (never published) is left as it is, so no inode
    outside the tree changes owner. A digest trusted before the build is carried
    across only for a file the build left untouched (see :mod:`shared.storage.digests`).
    """
    if uid is None:
        return
    me, group = os.getuid(), os.getgid()
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if st.st_uid == uid and (stat.S_ISDIR(st.st_mode) or st.st_nlink == 1):
                _chown(path, me, group, digests, st)
    os.lchown(workdir, me, group)
    if digests is not None:
        digests.seal(workdir)


def _chown(
    path: str, uid: int, gid: int, digests: Digests | None, st: os.stat_result | None = None
) -> None:
    """``lchown``, carrying a trusted digest to the file's new stamp."""
    if digests is None:
        os.lchown(path, uid, gid)
        return
    before = st or os.lstat(path)
    os.lchown(path, uid, gid)
    if stat.S_ISREG(before.st_mode):
        digests.carry(before, os.lstat(path))


# The launcher runs from its code compiled once per deployer (``launcher_code``),
# sent ahead of the launch spec on the same pipe: run as a file, the interpreter
# would compile its ~400 lines again for every build (~3.5 ms of its ~15 ms of CPU).
# This bootstrap reads the code (a 4-byte length, then the marshalled code object),
# drops the launcher's path from ``sys.argv`` (it stays on the command line, which
# says what runs) and runs it as ``__main__``; the launcher reads the rest.
LAUNCHER_BOOT = (
    "import marshal,os,sys\n"
    "f=int(sys.argv[2]);n=int.from_bytes(os.read(f,4),'big');b=b''\n"
    "while len(b)<n and (c:=os.read(f,n-len(b))):b+=c\n"
    "del sys.argv[1]\n"
    "exec(marshal.loads(b))\n"
)


def launcher_argv(spec_fd: int) -> list[str]:
    """The launcher's command line: its code and the launch spec come on the
    inherited ``spec_fd`` (:func:`launch_pipe`)."""
    return [sys.executable, "-I", "-S", "-c", LAUNCHER_BOOT, str(LAUNCHER), str(spec_fd)]


@lru_cache(maxsize=1)
def launcher_code() -> bytes:
    """``deployer/_launch.py`` compiled (as ``python FILE`` would: no ``__future__``
    flags of this module), marshalled, behind its length."""
    code = compile(LAUNCHER.read_bytes(), str(LAUNCHER), "exec", dont_inherit=True, optimize=0)
    data = marshal.dumps(code)
    return len(data).to_bytes(4, "big") + data


def launch_pipe(spec: str, command: str, env: Mapping[str, str]) -> int:
    """A pipe's read end holding the launcher's code (:func:`launcher_code`) and
    then the whole launch spec (the sandbox ``spec``, the build ``command`` and its
    ``env``, in marshal format); pass it to the launcher and close it after.

    The payload is written before the launcher starts, so the pipe is grown to
    hold it; the write end is closed here.
    """
    # marshal: the launcher runs on this same interpreter (``sys.executable``) and
    # reads it without importing anything (see ``deployer/_launch.py``).
    launch = marshal.dumps({"spec": json.loads(spec), "command": command, "env": dict(env)})
    payload = launcher_code() + launch
    read_fd, write_fd = os.pipe()
    try:
        # Usually 64 KiB, less for a user over ``pipe-user-pages-soft``: never write
        # more than the pipe holds (no reader yet, the write would block for good).
        if len(payload) > fcntl.fcntl(write_fd, F_GETPIPE_SZ):
            try:
                fcntl.fcntl(write_fd, F_SETPIPE_SZ, len(payload))
            except OSError as exc:
                raise ConfigError(f"build command and environment too large ({exc})") from exc
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def _candidate(level: Level, network: bool, max_procs: int, uids: UidPool | None) -> Sandbox | None:
    """``level`` configured for this host, or None if it cannot apply at all."""
    prefix = interpreter_prefix()
    expose = () if prefix.is_relative_to("/usr") else (str(prefix),)
    if level is Level.BWRAP:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return None
        return Sandbox(level, network, max_procs, uids, bwrap, expose=expose)
    if level is Level.UID:
        return None if uids is None else Sandbox(level, network, max_procs, uids, expose=expose)
    return Sandbox(level, network, max_procs) if network else None  # off needs a namespace


def probe(sandbox: Sandbox) -> str | None:
    """Run a trivial build under ``sandbox``; None if it works, else why not."""
    with tempfile.TemporaryDirectory(prefix="buildq-probe-") as tmp:
        workdir = Path(tmp) / "job"
        (workdir / "src").mkdir(parents=True)
        with sandbox.borrow() as uid:
            prepare_workdir(workdir, uid)
            limits = LaunchLimits(30, 1 << 30, 1 << 20, sandbox.max_procs)
            spec = sandbox.spec(
                cwd=sandbox.inside(workdir / "src", workdir),
                workdir=workdir,
                uid=uid,
                limits=limits,
            )
            command = 'echo ok > probe && test "$(cat probe)" = ok'
            spec_fd = launch_pipe(spec, command, LAUNCHER_ENV)
            try:
                done = subprocess.run(
                    launcher_argv(spec_fd),
                    env=LAUNCHER_ENV,
                    pass_fds=(spec_fd,),
                    capture_output=True,
                    timeout=PROBE_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return "probe timed out"
            finally:
                os.close(spec_fd)
            if done.returncode != 0:
                return (done.stdout + done.stderr).decode("utf-8", "replace").strip()[:300]
    return None


def try_level(level: Level, settings: Settings) -> tuple[Sandbox | None, str]:
    """``level`` probed on this host: (sandbox, "") if it works, else (None, why not)."""
    uids = None
    if os.geteuid() == 0:
        uids = UidPool(settings.build_uid_base, settings.build_uid_count, _lock_dir())
    network = settings.build_network == "on"
    candidate = _candidate(level, network, settings.build_max_procs, uids)
    if candidate is None:
        if level is Level.PROCESS:
            return None, "network off needs the network namespace of the uid or bwrap level"
        return None, "needs root" if level is Level.UID else "bwrap is not installed"
    problem = probe(candidate)
    if problem and level is Level.BWRAP:  # an older kernel or bwrap: no --disable-userns
        candidate = dataclasses.replace(candidate, disable_userns=False)
        problem = probe(candidate)
    return (None, problem) if problem else (candidate, "")


@lru_cache(maxsize=8)
def _choose(settings: Settings) -> Sandbox:
    choice = settings.build_sandbox
    levels = list(Level) if choice == "auto" else [Level(choice)]
    reasons: list[str] = []
    for level in levels:
        sandbox, problem = try_level(level, settings)
        if sandbox is not None:
            return sandbox
        reasons.append(f"{level.value}: {problem}")
    raise ConfigError(
        f"no build sandbox for BUILDQ_BUILD_SANDBOX={choice} "
        f"BUILDQ_BUILD_NETWORK={settings.build_network}: " + "; ".join(reasons)
    )


def choose(settings: Settings) -> Sandbox:
    """The sandbox builds use under ``settings``, with its resource-limits mechanism
    (each probed once per process; blocking)."""
    return dataclasses.replace(_choose(settings), limiter=probe_limits(settings))


_CHOSEN: dict[Settings, Sandbox] = {}


async def sandbox_for(settings: Settings) -> Sandbox:
    """:func:`choose` from async code: probed in a worker thread the first time, then
    answered from memory (every job asks; a thread hop each costs CPU for nothing)."""
    sandbox = _CHOSEN.get(settings)
    if sandbox is None:
        sandbox = _CHOSEN[settings] = await anyio.to_thread.run_sync(choose, settings)
    return sandbox


def announce(settings: Settings) -> Sandbox:
    """Detect and log the isolation level at start-up; warn when it is the weakest.

    Exits the process (status 2) when the configured level cannot work here.
    """
    try:
        sandbox = _choose(settings)  # the limits mechanism has its own announcement
    except ConfigError as exc:
        log.error("sandbox.unavailable", error=str(exc))
        raise SystemExit(2) from None
    if sandbox.level is Level.PROCESS:
        log.warning(
            "sandbox.weak",
            sandbox=sandbox.level.value,
            detail=sandbox.describe(),
            advice="builds can read this deployer's environment and files; install "
            "bubblewrap or run the deployer as root, and keep secrets out of its environment",
        )
    else:
        log.info("sandbox.ready", sandbox=sandbox.level.value, detail=sandbox.describe())
    return sandbox
