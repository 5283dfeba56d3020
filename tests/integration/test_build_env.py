"""A build's environment reaches only the build: an ``LD_PRELOAD`` library given in
``build.env`` never runs in the launcher, bubblewrap or any other process outside
the sandbox, at every level this host can run; and neither the command nor the
environment's values show on the launcher's command line or in its environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

import anyio
import anyio.to_thread
import fakeredis
import psutil
import pytest

from deployer.build import Limits, build_env, run_build
from deployer.sandbox import LAUNCHER, Level, Sandbox
from shared.engine.logs import LogWriter, read_log
from shared.redis.keys import Keys
from tests.unit.test_hostile_build import LEVELS, level_or_fallback

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# The constructor appends "pid uid pid-namespace cmdline" to every file named in
# PRELOAD_LOG (colon-separated) that it can open.
PRELOAD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void mark(void) {
    const char *logs = getenv("PRELOAD_LOG");
    if (!logs) return;
    char ns[128] = "?", cmd[512] = "", line[1024], paths[4096];
    ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
    if (n > 0) ns[n] = 0;
    int fd = open("/proc/self/cmdline", O_RDONLY);
    if (fd >= 0) {
        n = read(fd, cmd, sizeof cmd - 1);
        close(fd);
        for (ssize_t i = 0; i < n; i++) if (cmd[i] == 0) cmd[i] = ' ';
        if (n > 0) cmd[n] = 0;
    }
    int len = snprintf(line, sizeof line, "%d %d %s %s\n", getpid(), getuid(), ns, cmd);
    strncpy(paths, logs, sizeof paths - 1);
    paths[sizeof paths - 1] = 0;
    for (char *p = strtok(paths, ":"); p; p = strtok(NULL, ":")) {
        fd = open(p, O_WRONLY | O_APPEND | O_CREAT, 0666);
        if (fd >= 0) { write(fd, line, len); close(fd); }
    }
}
"""


@pytest.fixture(scope="module")
def preload_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this host: cannot build the LD_PRELOAD library")
    where = tmp_path_factory.mktemp("preload")
    (where / "mark.c").write_text(PRELOAD_C)
    lib = where / "mark.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-o", str(lib), str(where / "mark.c")], check=True, timeout=60
    )
    where.chmod(0o755)
    lib.chmod(0o755)
    return lib


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "job" / "src").mkdir(parents=True)
    return tmp_path / "job"


async def build(
    sandbox: Sandbox, workdir: Path, command: str, extra: Mapping[str, str]
) -> tuple[int, str]:
    """``run_build`` with ``extra`` in the build's environment, unvalidated (as a
    deployer bug or a future code path might pass it)."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    writer = LogWriter(redis, Keys("t"), "job", max_bytes=1 << 20, max_entries=10_000)
    env = build_env(workdir / "home", extra, {"BUILDQ_JOB_ID": "job"})
    limits = Limits(30, 60, 2 << 30, 1 << 30)
    status = await run_build(
        command, workdir / "src", env, limits, writer, sandbox=sandbox, workdir=workdir
    )
    lines = await read_log(redis, Keys("t"), "job", count=10_000)
    return status, "\n".join(e.text for e in lines)


def records(path: Path) -> list[tuple[str, str, str]]:
    """(pid, namespace, cmdline) of every process that loaded the library."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, _uid, ns, cmd = [*line.split(" ", 3), ""][:4]
        out.append((pid, ns, cmd))
    return out


@pytest.mark.parametrize("level", LEVELS)
async def test_an_ld_preload_library_never_runs_outside_the_sandbox(
    level: Level, workdir: Path, tmp_path: Path, preload_lib: Path
) -> None:
    sandbox = level_or_fallback(level)
    if sandbox is None:
        return
    # One copy outside the job directory (invisible in the uid and bwrap
    # sandboxes), one inside it (where the build's own shell can load it).
    inside_lib = workdir / "src" / "mark.so"
    shutil.copy(preload_lib, inside_lib)
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    extra = {
        "LD_PRELOAD": f"{preload_lib} {inside_lib}",
        "PRELOAD_LOG": f"{outside / 'log'}:{workdir / 'inside.log'}",
    }
    status, text = await build(sandbox, workdir, "echo built", extra)
    assert status == 0, text
    assert "built" in text
    host_ns = os.readlink("/proc/self/ns/pid")
    seen_outside = records(outside / "log")
    seen_inside = records(workdir / "inside.log")
    assert seen_inside, "the build's own shell should have loaded its library"
    for pid, ns, cmd in seen_outside + seen_inside:
        assert str(LAUNCHER.name) not in cmd, f"the launcher loaded the library: {pid} {cmd}"
        assert "bwrap" not in cmd.split(" ", 1)[0], f"bubblewrap loaded the library: {cmd}"
        if level is not Level.PROCESS:
            assert ns != host_ns, f"process {pid} ({cmd}) outside the build's pid namespace"


def launcher_of_this_process() -> psutil.Process:
    for child in psutil.Process().children():
        if str(LAUNCHER) in " ".join(child.cmdline()):
            return child
    raise AssertionError("no launcher is running")


def read_launcher_proc() -> dict[str, bytes]:
    """The launcher's environ and the command lines of it and all its descendants."""
    launcher = launcher_of_this_process()
    seen = {"launcher environ": Path(f"/proc/{launcher.pid}/environ").read_bytes()}
    for proc in [launcher, *launcher.children(recursive=True)]:
        seen[f"{proc.pid} cmdline"] = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    return seen


@pytest.mark.parametrize("level", LEVELS)
async def test_command_and_env_values_stay_off_the_launchers_cmdline_and_environ(
    level: Level, workdir: Path
) -> None:
    sandbox = level_or_fallback(level)
    if sandbox is None:
        return
    command_secret = "cmd-" + uuid.uuid4().hex
    env_secret = "env-" + uuid.uuid4().hex
    fifo = workdir / "src" / "gate"
    os.mkfifo(fifo, 0o666)
    command = f': {command_secret}; cat "$GATE" > /dev/null; echo passed'
    extra = {"API_KEY": env_secret, "GATE": str(fifo)}
    seen: dict[str, bytes] = {}

    async def inspect_while_running() -> None:
        # Opening the FIFO for writing returns once the build has opened it to read.
        fd = await anyio.to_thread.run_sync(os.open, fifo, os.O_WRONLY)
        try:
            seen.update(await anyio.to_thread.run_sync(read_launcher_proc))
        finally:
            os.close(fd)

    result: list[tuple[int, str]] = []

    async def run() -> None:
        result.append(await build(sandbox, workdir, command, extra))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await inspect_while_running()
    status, text = result[0]
    assert status == 0, text
    assert "passed" in text
    assert len(seen) >= 3  # the launcher's cmdline and environ, and the build's shell
    for what, raw in seen.items():
        assert command_secret.encode() not in raw, what
        assert env_secret.encode() not in raw, what
    environ = dict(
        item.split("=", 1) for item in seen["launcher environ"].decode().split("\0") if item
    )
    assert environ == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def owners_under(workdir: Path) -> dict[str, int]:
    """Every path under ``workdir`` (and itself, as ".") -> its owner (lstat)."""
    owners = {".": workdir.lstat().st_uid}
    for root, dirs, files in os.walk(workdir):
        for name in [*dirs, *files]:
            path = Path(root, name)
            owners[str(path.relative_to(workdir))] = path.lstat().st_uid
    return owners


@pytest.mark.parametrize("level", [Level.BWRAP, Level.UID])
async def test_the_job_directory_is_the_deployers_again_before_its_uid_is_released(
    level: Level, workdir: Path
) -> None:
    """The next build gets the same uid: it must not own this job's output while
    the deployer publishes it."""
    sandbox = level_or_fallback(level)
    if sandbox is None or sandbox.uids is None:
        pytest.skip(f"{level.value} runs builds as a separate uid only as root")
    command = (
        "mkdir -p dist/deep && echo x > dist/deep/f && ln -s /etc/shadow dist/link "
        "&& mkfifo dist/pipe && chmod 000 dist/deep && id -u"
    )
    status, text = await build(sandbox, workdir, command, {})
    assert status == 0, text
    assert str(os.getuid()) not in text.split()  # the build ran as another uid
    owners = await anyio.to_thread.run_sync(owners_under, workdir)
    assert "src/dist/deep/f" in owners
    assert set(owners.values()) == {os.getuid()}, owners
