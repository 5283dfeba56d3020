"""Hostile builds at every isolation level, with real processes.

Each level this host can run is exercised; a level it cannot run must be refused
when asked for explicitly (never silently weakened), and ``auto`` must pick the
strongest that works. Asserted: no secret of the deployer's environment is
visible, the whole process tree (``setsid`` children too) is gone after a timeout,
a cancellation or a normal exit, network off means no connection, the rlimits
bite, and a build printing 200 MB keeps the daemon's memory flat.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import fakeredis
import psutil
import pytest
from structlog.testing import capture_logs

from deployer.build import BuildTimeout, Limits, build_env, run_build
from deployer.sandbox import Level, Sandbox, announce, choose, try_level
from shared.core.errors import ConfigError, ValidationError
from shared.core.settings import load_settings
from shared.engine.logs import LogWriter, read_log
from shared.redis.keys import Keys
from tests.unit.test_hostile_urls import Listener

pytestmark = pytest.mark.anyio
SECRET = "deployer-secret-" + uuid.uuid4().hex
ROOT = os.geteuid() == 0
HAS_BWRAP = shutil.which("bwrap") is not None


def level_or_fallback(level: Level, network: str = "on") -> Sandbox | None:
    """The probed sandbox for ``level``, or None after asserting why it cannot run."""
    settings = load_settings({"BUILDQ_BUILD_NETWORK": network, "BUILDQ_BUILD_MAX_PROCS": "64"})
    sandbox, problem = try_level(level, settings)
    if sandbox is None:
        explicit = load_settings(
            {"BUILDQ_BUILD_SANDBOX": level.value, "BUILDQ_BUILD_NETWORK": network}
        )
        with pytest.raises(ConfigError, match=level.value):
            choose(explicit)
        assert problem
    return sandbox


def test_auto_picks_the_strongest_level_this_host_supports() -> None:
    chosen = choose(load_settings({}))
    if ROOT and HAS_BWRAP:
        expected = Level.BWRAP
    elif ROOT:
        expected = Level.UID
    else:  # bubblewrap without root needs unprivileged user namespaces
        expected = Level.BWRAP if try_level(Level.BWRAP, load_settings({}))[0] else Level.PROCESS
    assert chosen.level is expected, chosen.describe()


def test_network_off_is_never_silently_ignored() -> None:
    off = load_settings({"BUILDQ_BUILD_NETWORK": "off", "BUILDQ_BUILD_SANDBOX": "process"})
    with pytest.raises(ConfigError, match="network namespace"):
        choose(off)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "job" / "src").mkdir(parents=True)
    return tmp_path / "job"


@pytest.fixture
def secret_in_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("BUILDQ_FAKE_TOKEN", SECRET)


async def build(
    sandbox: Sandbox | None,
    workdir: Path,
    command: str,
    *,
    timeout_s: float = 20,
    file_bytes: int = 1 << 30,
) -> tuple[int | str, str]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    writer = LogWriter(redis, Keys("t"), "job", max_bytes=1 << 20, max_entries=50_000)
    env = build_env(workdir / "home", {}, {"BUILDQ_JOB_ID": "job"})
    limits = Limits(timeout_s, 60, 2 << 30, file_bytes)
    try:
        status: int | str = await run_build(
            command, workdir / "src", env, limits, writer, sandbox=sandbox, workdir=workdir
        )
    except BuildTimeout as exc:
        status = str(exc)
    lines = await read_log(redis, Keys("t"), "job", count=100_000)
    return status, "\n".join(e.text for e in lines)


def alive(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


LEVELS = [Level.BWRAP, Level.UID, Level.PROCESS]

SNOOP = (
    "env; cat /proc/$PPID/environ; cat /proc/1/environ; "
    "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null; "
    "cat /proc/[0-9]*/cmdline 2>/dev/null; true"
)


@pytest.fixture
def deployer_like() -> Iterator[None]:
    """A process of this uid whose start-up environment holds the secret, as a
    deployer's does (later putenv calls never show in /proc/<pid>/environ)."""
    proc = subprocess.Popen(["sleep", "120"], env={**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET})
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("level", LEVELS)
async def test_the_deployer_environment_is_invisible_to_the_build(
    level: Level, workdir: Path, secret_in_environ: None, deployer_like: None
) -> None:
    sandbox = level_or_fallback(level)
    if sandbox is None:
        return
    status, own = await build(
        sandbox, workdir, "env; (tr '\\0' '\\n' < /proc/$PPID/environ) 2>&1; true"
    )
    assert status == 0, own
    assert "BUILDQ_JOB_ID=job" in own  # the build's own allowlisted environment
    assert SECRET not in own
    assert "AWS_SECRET_ACCESS_KEY" not in own
    status, scan = await build(sandbox, workdir, SNOOP)
    assert status == 0, scan
    if level is Level.PROCESS:
        # The documented weakness of the weakest level: same uid, /proc readable.
        assert SECRET in scan
    else:
        assert SECRET not in scan


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("how", ["timeout", "cancel", "exit"])
async def test_the_whole_tree_dies_with_the_build(level: Level, how: str, workdir: Path) -> None:
    sandbox = level_or_fallback(level)
    if sandbox is None:
        return
    marker = f"{3000 + int(uuid.uuid4().int % 1000)}.{uuid.uuid4().int % 997}"
    daemon = (
        f"(setsid sh -c 'sleep {marker}' &); (sh -c 'sleep {marker}' &); nohup sleep {marker} &"
    )
    command = daemon + (" echo started; sleep 300" if how != "exit" else " echo started")
    started = time.monotonic()
    if how == "cancel":
        with anyio.move_on_after(1.0):
            await build(sandbox, workdir, command)
    else:
        status, log = await build(sandbox, workdir, command, timeout_s=1.0)
        assert "started" in log
        assert status == ("build timed out after 1s" if how == "timeout" else 0)
    # ~1 s of build plus at most 2 s to stop; slack for a loaded CI machine.
    assert time.monotonic() - started < 5.0
    assert alive(f"sleep {marker}") == []


@pytest.mark.parametrize("level", [Level.BWRAP, Level.UID])
async def test_network_off_means_no_connection(level: Level, workdir: Path) -> None:
    listener = Listener()
    try:
        connect = (
            "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', "
            f"{listener.port}), timeout=2); print('CONNECTED')\""
        )
        for network, connected in (("off", False), ("on", True)):
            sandbox = level_or_fallback(level, network)
            if sandbox is None:
                return
            status, log = await build(sandbox, workdir, connect)
            assert ("CONNECTED" in log) is connected, log
            assert (status == 0) is connected
        assert len(listener.connections) == 1  # only the network-on build got through
    finally:
        listener.close()


@pytest.mark.parametrize("level", [Level.BWRAP, Level.UID])
async def test_the_host_is_read_only_and_other_jobs_are_out_of_reach(
    level: Level, tmp_path: Path, workdir: Path
) -> None:
    sandbox = level_or_fallback(level)
    if sandbox is None:
        return
    other = tmp_path / "other-job"
    other.mkdir(mode=0o700)
    (other / "secret.txt").write_text("other tenant")
    probe_file = tmp_path / "written-by-build"
    command = (
        f"cat {other}/secret.txt; cat /etc/shadow; touch {probe_file}; "
        "touch /usr/pwned; echo ok > mine.txt; id -u"
    )
    status, log = await build(sandbox, workdir, command)
    assert status == 0, log
    assert "other tenant" not in log
    assert "root:" not in log
    assert not await anyio.Path(probe_file).exists()
    assert not await anyio.Path("/usr/pwned").exists()
    assert (workdir / "src" / "mine.txt").read_text() == "ok\n"
    if ROOT:
        assert log.strip().splitlines()[-1] != "0"  # never root


@pytest.mark.parametrize("level", [Level.BWRAP, Level.UID])
async def test_rlimits_contain_fork_bombs_and_huge_files(level: Level, workdir: Path) -> None:
    sandbox = level_or_fallback(level)
    if sandbox is None or not ROOT:
        return
    marker = f"{4000 + uuid.uuid4().int % 1000}"
    bomb = f"i=0; while [ $i -lt 200 ]; do sleep {marker} & i=$((i+1)); done; wait"
    status, log = await build(sandbox, workdir, bomb, timeout_s=5)
    assert "fork" in log.lower() or "resource temporarily unavailable" in log.lower(), log[-500:]
    assert alive(f"sleep {marker}") == []
    status, log = await build(
        sandbox, workdir, "head -c 3000000 /dev/zero > big", file_bytes=1 << 20
    )
    assert status != 0
    assert (workdir / "src" / "big").stat().st_size <= 1 << 20


MEMORY_SCRIPT = """
import anyio, resource, sys
from pathlib import Path
from tests.unit.test_hostile_build import build
from deployer.sandbox import choose
from shared.core.settings import load_settings
workdir = Path(sys.argv[1]); (workdir / "src").mkdir(parents=True)
megabytes = int(sys.argv[2])
cmd = f"head -c {megabytes}000000 /dev/zero | tr '\\\\0' 'a' | fold -w 100; echo END"
status, log = anyio.run(build, choose(load_settings({})), workdir, cmd)
assert status == 0 and log.endswith("END"), (status, log[-200:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.slow
def test_a_build_printing_200_megabytes_keeps_memory_flat(tmp_path: Path) -> None:
    def peak_mb(megabytes: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / f"w{megabytes}"), str(megabytes)],
            capture_output=True,
            text=True,
            timeout=240,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        return int(done.stdout.strip().splitlines()[-1])

    small, large = peak_mb(2), peak_mb(200)
    assert large - small < 40, (small, large)


@pytest.mark.parametrize("level", LEVELS)
async def test_a_build_that_swaps_its_checkout_for_a_symlink_fails(
    level: Level, workdir: Path
) -> None:
    """Else the deployer would publish the host's /etc through ``src -> /``."""
    sandbox = level_or_fallback(level)
    if sandbox is None:
        return
    with pytest.raises(ValidationError, match="replaced src"):
        await build(sandbox, workdir, "cd .. && rm -rf src && ln -s / src")
    assert (workdir / "src").is_symlink()


async def test_the_weakest_level_warns_at_start_up() -> None:
    with capture_logs() as logs:
        sandbox = announce(load_settings({"BUILDQ_BUILD_SANDBOX": "process"}))
    assert sandbox.level is Level.PROCESS
    assert logs[0]["event"] == "sandbox.weak"
    assert logs[0]["log_level"] == "warning"
    assert "environment" in logs[0]["advice"]
    with capture_logs() as logs, pytest.raises(SystemExit):
        announce(load_settings({"BUILDQ_BUILD_SANDBOX": "process", "BUILDQ_BUILD_NETWORK": "off"}))
    assert logs[0]["event"] == "sandbox.unavailable"
