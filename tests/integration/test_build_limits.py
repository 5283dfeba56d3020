"""Build resource limits with the real sandbox and launcher: a build that touches
three times its memory fails as out of memory, V8's WebAssembly reservations
(which RLIMIT_AS killed) work, every process of the build is in its own cgroup
and the group is gone afterwards, and the job record says why it failed."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import fakeredis
import psutil
import pytest

from deployer.build import BuildOutOfMemory, Limits, build_env, run_build
from deployer.limits import probe as probe_limits
from deployer.sandbox import Sandbox, choose
from shared.core.cgroups import Host, Mechanism
from shared.core.settings import load_settings
from shared.engine.logs import LogWriter, read_log
from shared.redis.keys import Keys
from tests.integration.helpers import Stack, make_repo
from tests.integration.test_hostile_http import module_stack

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = os.geteuid() == 0
MIB = 1024 * 1024
# Allocates 192 MiB and writes one byte per page, so all of it is resident.
TOUCH_192 = (
    'python3 -c "b = bytearray(192 * 1024 * 1024); '
    "b[::4096] = b'x' * len(b[::4096]); print('survived')\""
)
WASM = "node -e \"new WebAssembly.Memory({initial: 1, maximum: 65536}); console.log('wasm ok')\""


def cgroups_here() -> bool:
    """Whether this host gives builds a cgroup (root on cgroup v1 or v2 here)."""
    return probe_limits(load_settings({})).uses_cgroups


def sandbox(**env: str) -> Sandbox:
    return choose(load_settings({f"BUILDQ_{k.upper()}": v for k, v in env.items()}))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "job" / "src").mkdir(parents=True)
    return tmp_path / "job"


async def build(
    box: Sandbox, workdir: Path, command: str, *, memory_mb: int, job_id: str = "job"
) -> tuple[int, str]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    writer = LogWriter(redis, Keys("t"), job_id, max_bytes=1 << 20, max_entries=50_000)
    env = build_env(workdir / "home", {}, {"BUILDQ_JOB_ID": job_id})
    limits = Limits(120, 120, memory_mb * MIB, 1 << 30)
    try:
        status = await run_build(
            command, workdir / "src", env, limits, writer, sandbox=box, workdir=workdir
        )
    finally:
        lines = await read_log(redis, Keys("t"), job_id, count=100_000)
        print("\n".join(e.text for e in lines))  # shown when a test fails
    return status, "\n".join(e.text for e in lines)


def build_groups() -> list[Path]:
    """Every build group in the hierarchies this process would create them in."""
    limiter = probe_limits(load_settings({}))
    assert limiter.layout is not None
    return [
        entry
        for parent in limiter.layout.directories()
        for entry in parent.iterdir()
        if entry.name.startswith("buildq-")
    ]


def test_this_host_enforces_limits_with_cgroups_when_root() -> None:
    limiter = probe_limits(load_settings({}))
    if ROOT:  # CI and the development machines run the tests as root
        assert limiter.mechanism in (Mechanism.CGROUP_V1, Mechanism.CGROUP_V2), limiter.why_not
        expected = "cgroup v2" if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists() else "v1"
        assert expected in limiter.mechanism.value
    else:
        assert limiter.mechanism in list(Mechanism)


@pytest.mark.slow
async def test_a_build_touching_three_times_its_memory_fails_as_out_of_memory(
    workdir: Path,
) -> None:
    box = sandbox(build_memory_mb="64")
    with pytest.raises(BuildOutOfMemory, match=r"^build ran out of memory \(limit 64 MiB\)$"):
        await build(box, workdir, TOUCH_192, memory_mb=64)


@pytest.mark.slow
async def test_an_allocation_failure_under_rlimits_fails_as_out_of_memory(workdir: Path) -> None:
    box = sandbox(build_memory_mb="64", build_limits="rlimit")
    assert box.limiter.mechanism is Mechanism.RLIMIT
    with pytest.raises(BuildOutOfMemory, match=r"^build ran out of memory \(limit 64 MiB\)$"):
        await build(box, workdir, TOUCH_192, memory_mb=64)


async def test_a_build_within_its_memory_passes(workdir: Path) -> None:
    box = sandbox(build_memory_mb="256")
    status, log = await build(box, workdir, TOUCH_192.replace("192", "32"), memory_mb=256)
    assert status == 0
    assert "survived" in log


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "rlimit"])
async def test_v8_webassembly_reservations_work_under_the_default_limits(
    mode: str, workdir: Path
) -> None:
    """RLIMIT_AS at 4 GiB made V8 fail: it reserves ~10 GiB of address space per
    WebAssembly memory (guard regions) without touching it."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: cannot run the V8 WebAssembly build")
    box = sandbox(build_limits=mode)
    status, log = await build(box, workdir, WASM, memory_mb=4096)
    assert status == 0, log
    assert "wasm ok" in log


def look_inside(
    workdir: Path, job_id: str, before: set[Path], limits_seen: list[str]
) -> tuple[str, list[Path]]:
    """(blocking) Once the build holds its fifo open: its reader's cgroups (as the
    host sees them) and the build groups created since ``before``, with their
    memory limits; then let the build end."""
    fd = os.open(workdir / "src" / f"go-{job_id}", os.O_WRONLY)  # once `cat` opened it
    try:
        reader = ["cat", f"go-{job_id}"]
        pids = [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == reader]
        assert len(pids) == 1, pids
        groups = Path(f"/proc/{pids[0]}/cgroup").read_text()
        created = sorted(set(build_groups()) - before)
        for path in created:
            for name in ("memory.max", "memory.limit_in_bytes"):
                if path.name.startswith(f"buildq-{job_id}-") and (path / name).exists():
                    limits_seen.append((path / name).read_text().strip())
        return groups, created
    finally:
        os.close(fd)


async def test_every_build_process_is_in_the_build_group_which_is_removed_after(
    workdir: Path,
) -> None:
    if not cgroups_here():
        pytest.skip("this host gives builds no cgroup (run as root)")
    box = sandbox()
    layout = box.limiter.layout
    assert layout is not None
    job_id = f"grp{uuid.uuid4().hex[:8]}"
    fifo_name = f"go-{job_id}"
    os.mkfifo(workdir / "src" / fifo_name, 0o600)
    before = set(build_groups())
    seen: list[tuple[str, list[Path]]] = []
    limits_seen: list[str] = []

    async def watch() -> None:
        seen.append(
            await anyio.to_thread.run_sync(look_inside, workdir, job_id, before, limits_seen)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        status, _ = await build(
            box, workdir, f"sh -c 'cat {fifo_name}'; echo done", memory_mb=512, job_id=job_id
        )
    assert status == 0
    groups, created = seen[0]
    [limit] = limits_seen
    own = Host().own_groups()
    lines = [line for line in groups.splitlines() if f"/buildq-{job_id}-" in line]
    controllers = {c for line in lines for c in line.split(":")[1].split(",")}
    assert {"memory", "pids"} <= controllers or "" in controllers, groups
    memory = next(line for line in lines if line.split(":")[1] in ("", "memory"))
    assert memory.split(":", 2)[2].startswith(own.get("memory", own.get("", "")))
    # (Other deployers on this host may be making groups of their own meanwhile.)
    mine = [p for p in created if p.name.startswith(f"buildq-{job_id}-")]
    assert len(mine) == len(layout.directories())
    assert [p for p in mine if await anyio.Path(p).exists()] == []
    assert limit == str(512 * MIB)  # memory.max (v2) or memory.limit_in_bytes (v1)


@pytest.fixture(scope="module")
def small(
    valkey_url: str, s3_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {"BUILDQ_BUILD_MEMORY_MB": "64", "BUILDQ_BUILD_TIMEOUT_S": "120"}
    yield from module_stack(valkey_url, s3_url, tmp_path_factory, extra)


@pytest.mark.slow
def test_an_out_of_memory_deployment_fails_with_a_clear_error(small: Stack, tmp_path: Path) -> None:
    toml = "[build]\ncommand = '''" + TOUCH_192 + "'''\noutput = \".\"\n"
    repo = make_repo(tmp_path / "hungry", {"index.html": "x", "buildq.toml": toml})
    job_id = small.deploy(repo, service="hungry")
    record = small.wait(job_id, timeout_s=120)
    assert record["status"] == "failed", small.logs_text(job_id)
    assert record["error"] == "build ran out of memory (limit 64 MiB)"
    assert "survived" not in small.logs_text(job_id).splitlines()  # (the command line has it)
    started = (small.logs / "deployer-0.log").read_text()
    assert '"limits.ready"' in started or '"limits.weak"' in started
