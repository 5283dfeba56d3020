"""Build resource limits: the cgroup filesystem logic against a fake cgroupfs in
``tmp_path`` (v2 and v1 layouts), the choice of mechanism, what the launcher is
told, and how an out-of-memory build is recognised under rlimits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from deployer import limits
from deployer.build import BuildOutOfMemory
from deployer.limits import RLIMIT_ONLY, BuildLimiter, close_group, looks_out_of_memory
from deployer.sandbox import (
    LAUNCHER,
    LAUNCHER_ENV,
    LaunchLimits,
    Level,
    Sandbox,
    launch_pipe,
    launcher_argv,
)
from shared.cli.doctor import build_limits
from shared.core import cgroups
from shared.core.cgroups import (
    CgroupError,
    Group,
    GroupLimits,
    Host,
    Mechanism,
    choose,
    find_layout,
    group_name,
    parse_key_count,
    summary,
)
from shared.core.errors import ConfigError
from shared.core.settings import load_settings

MIB = 1024 * 1024
LIMITS = GroupLimits(64 * MIB, 100, 1.5)
NO_CPU = GroupLimits(64 * MIB, 100, 0)
DEAD_PID = 2**22 + 12345  # above any pid_max: never a live process


@dataclass
class FakeHost:
    """A fake /proc/self and cgroup mounts under tmp_path."""

    root: Path

    @property
    def host(self) -> Host:
        return Host(self.root / "proc")

    def mount(self, kind: str, point: str, options: str, mount_root: str = "/") -> Path:
        path = self.root / point
        path.mkdir(parents=True, exist_ok=True)
        proc = self.root / "proc"
        proc.mkdir(exist_ok=True)
        line = f"30 25 0:26 {mount_root} {path} rw,nosuid - {kind} {kind} rw,{options}\n"
        with (proc / "mountinfo").open("a") as fh:
            fh.write(line)
        return path

    def member_of(self, lines: str) -> None:
        (self.root / "proc" / "cgroup").write_text(lines)


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel does that a plain directory tree does not: an exited
    process leaves ``cgroup.procs``; rmdir of a group removes its files."""
    real_pids = Group.pids

    def live_pids(group: Group) -> list[int]:
        return [p for p in real_pids(group) if _alive(p)]

    monkeypatch.setattr(Group, "pids", live_pids)
    monkeypatch.setattr(Path, "rmdir", shutil.rmtree)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def v2_host(fake: FakeHost) -> Path:
    root = fake.mount("cgroup2", "sys/fs/cgroup", "nsdelegate")
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    fake.member_of("0::/system.slice/buildq.service\n")
    return root


def v1_host(fake: FakeHost) -> dict[str, Path]:
    """A hybrid host: v1 memory, pids and cpu,cpuacct; a cgroup2 mount with none."""
    unified = fake.mount("cgroup2", "sys/fs/cgroup/unified", "nsdelegate")
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    mounts = {
        "memory": fake.mount("cgroup", "sys/fs/cgroup/memory", "memory"),
        "pids": fake.mount("cgroup", "sys/fs/cgroup/pids", "pids"),
        "cpu": fake.mount("cgroup", "sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
    }
    fake.member_of(
        "9:pids:/\n8:cpu,cpuacct:/svc\n4:memory:/process_api/abc\n1:name=systemd:/\n0::/\n"
    )
    own = {"memory": "process_api/abc", "pids": "", "cpu": "svc"}
    for name, mount in mounts.items():
        (mount / own[name]).mkdir(parents=True, exist_ok=True)
    return {name: mounts[name] / own[name] for name in mounts}


# --- v2 ---------------------------------------------------------------------


def test_v2_builds_go_in_a_buildq_group_at_the_root_with_controllers_enabled(
    fake: FakeHost,
) -> None:
    root = v2_host(fake)
    layout = find_layout(fake.host, LIMITS)
    assert layout.mechanism is Mechanism.CGROUP_V2
    assert layout.directories() == [root / "buildq"]
    layout.prepare()
    # The root is exempt from "no internal processes"; buildq holds only build groups.
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (root / "buildq" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    group = layout.create("buildq-job-1-aa", LIMITS)
    directory = root / "buildq" / "buildq-job-1-aa"
    assert group.procs_files == [str(directory / "cgroup.procs")]
    assert (directory / "memory.max").read_text() == str(64 * MIB)
    assert (directory / "pids.max").read_text() == "100"
    assert (directory / "cpu.max").read_text() == "150000 100000"
    assert not (directory / "memory.swap.max").exists()  # no swap accounting: skipped


def test_v2_writes_no_swap_when_the_kernel_accounts_swap(fake: FakeHost) -> None:
    root = v2_host(fake)
    layout = find_layout(fake.host, NO_CPU)
    layout.prepare()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    group = layout.create("buildq-job-1-aa", NO_CPU)
    (group.dirs[0] / "memory.swap.max").write_text("max")  # as the kernel creates it
    layout._apply(group.dirs[0], NO_CPU)
    assert (group.dirs[0] / "memory.swap.max").read_text() == "0"
    assert not (group.dirs[0] / "cpu.max").exists()


def test_v2_enables_only_the_controllers_not_yet_enabled(fake: FakeHost) -> None:
    root = v2_host(fake)
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (root / "buildq").mkdir()
    (root / "buildq" / "cgroup.subtree_control").write_text("memory\n")
    find_layout(fake.host, LIMITS).prepare()
    assert (root / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (root / "buildq" / "cgroup.subtree_control").read_text() == "+pids +cpu"


def test_v2_uses_a_delegated_parent_when_configured(fake: FakeHost, tmp_path: Path) -> None:
    v2_host(fake)
    delegated = tmp_path / "sys/fs/cgroup/user.slice/buildq-delegated"
    delegated.mkdir(parents=True)
    (delegated / "cgroup.controllers").write_text("memory pids\n")
    (delegated / "cgroup.subtree_control").write_text("")
    layout = find_layout(fake.host, NO_CPU, delegated)
    layout.prepare()
    assert layout.directories() == [delegated]
    assert (delegated / "cgroup.subtree_control").read_text() == "+memory +pids"
    with pytest.raises(CgroupError, match=r"lacks controllers \['cpu'\]"):
        find_layout(fake.host, LIMITS, delegated)


def test_v2_oom_count_is_read_from_memory_events() -> None:
    events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"
    assert parse_key_count(events, "oom_kill") == 2
    assert parse_key_count("low 0\n", "oom_kill") == 0


def test_v2_cleanup_kills_what_is_left_and_removes_the_group(fake: FakeHost, kernel: None) -> None:
    v2_host(fake)
    layout = find_layout(fake.host, NO_CPU)
    layout.prepare()
    group = layout.create(group_name("job1"), NO_CPU)
    (group.dirs[0] / "memory.events").write_text("oom 1\noom_kill 1\n")
    (group.dirs[0] / "cgroup.kill").write_text("0")
    child = subprocess.Popen(["sleep", "300"])
    (group.dirs[0] / "cgroup.procs").write_text(f"{child.pid}\n")
    group.kill()
    assert (group.dirs[0] / "cgroup.kill").read_text() == "1"  # v2's one-write kill
    assert child.wait() == -9
    assert close_group(group) == 1
    assert not group.dirs[0].exists()


# --- v1 ---------------------------------------------------------------------


def test_v1_builds_go_under_our_own_group_in_each_hierarchy(fake: FakeHost) -> None:
    own = v1_host(fake)
    layout = find_layout(fake.host, LIMITS)
    assert layout.mechanism is Mechanism.CGROUP_V1
    assert layout.directories() == [own["memory"], own["pids"], own["cpu"]]
    layout.prepare()  # nothing to enable in v1
    group = layout.create("buildq-job-1-aa", LIMITS)
    memory, pids, cpu = (own[c] / "buildq-job-1-aa" for c in ("memory", "pids", "cpu"))
    assert group.dirs == (memory, pids, cpu)
    assert group.procs_files == [str(d / "cgroup.procs") for d in (memory, pids, cpu)]
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert (pids / "pids.max").read_text() == "100"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "150000"
    # Each hierarchy gets only its own controller's files.
    assert sorted(p.name for p in memory.iterdir()) == ["memory.limit_in_bytes"]
    assert sorted(p.name for p in pids.iterdir()) == ["pids.max"]


def test_v1_without_a_cpu_cap_needs_no_cpu_hierarchy(fake: FakeHost) -> None:
    own = v1_host(fake)
    layout = find_layout(fake.host, NO_CPU)
    assert layout.directories() == [own["memory"], own["pids"]]


def test_v1_caps_swap_at_the_memory_limit_when_memsw_exists(fake: FakeHost) -> None:
    v1_host(fake)
    layout = find_layout(fake.host, NO_CPU)
    group = layout.create("buildq-job-1-aa", NO_CPU)
    (group.dirs[0] / "memory.memsw.limit_in_bytes").write_text("-1")  # as the kernel has it
    layout._apply(group.dirs[0], NO_CPU)
    assert (group.dirs[0] / "memory.memsw.limit_in_bytes").read_text() == str(64 * MIB)


def test_v1_paths_are_relative_to_the_mount_root(fake: FakeHost) -> None:
    """In a container the hierarchy's mount root is the container's own group."""
    point = fake.mount("cgroup", "sys/fs/cgroup/memory", "memory", "/docker/c1")
    fake.mount("cgroup", "sys/fs/cgroup/pids", "pids", "/docker/c1")
    fake.member_of("4:memory:/docker/c1/app\n3:pids:/docker/c1\n")
    layout = find_layout(fake.host, NO_CPU)
    assert layout.parents["memory"] == point / "app"
    assert layout.parents["pids"] == fake.root / "sys/fs/cgroup/pids"


def test_v1_oom_count_is_read_from_memory_oom_control(fake: FakeHost, kernel: None) -> None:
    v1_host(fake)
    group = find_layout(fake.host, NO_CPU).create(group_name("job1"), NO_CPU)
    (group.dirs[0] / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    )
    assert group.oom_kills() == 3


def test_v1_cleanup_kills_every_process_left_and_removes_every_directory(
    fake: FakeHost, kernel: None
) -> None:
    v1_host(fake)
    group = find_layout(fake.host, LIMITS).create(group_name("job1"), LIMITS)
    children = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    (group.dirs[0] / "cgroup.procs").write_text(f"{children[0].pid}\n{children[1].pid}\n")
    (group.dirs[1] / "cgroup.procs").write_text(f"{children[1].pid}\n")
    assert close_group(group) == 0  # no memory.oom_control: no OOM kill recorded
    assert [c.wait() for c in children] == [-9, -9]
    assert not any(d.exists() for d in group.dirs)


def test_a_failed_create_leaves_nothing_behind(fake: FakeHost) -> None:
    own = v1_host(fake)
    (own["pids"] / "buildq-job-1-aa").mkdir()  # taken in one hierarchy
    with pytest.raises(CgroupError, match="buildq-job-1-aa"):
        find_layout(fake.host, NO_CPU).create("buildq-job-1-aa", NO_CPU)
    assert not (own["memory"] / "buildq-job-1-aa").exists()


def test_no_usable_hierarchy_says_why(fake: FakeHost) -> None:
    unified = fake.mount("cgroup2", "sys/fs/cgroup/unified", "nsdelegate")
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    fake.mount("cgroup", "sys/fs/cgroup/memory", "memory")
    fake.member_of("4:memory:/\n0::/\n")
    with pytest.raises(CgroupError) as caught:
        find_layout(fake.host, NO_CPU)
    assert "lacks memory, pids" in str(caught.value)
    assert "no cgroup v1 pids hierarchy" in str(caught.value)


def test_stale_groups_are_those_of_deployers_that_are_gone(fake: FakeHost) -> None:
    own = v1_host(fake)
    dead = own["memory"] / f"buildq-job1-{DEAD_PID}-aaaa"
    live = own["memory"] / f"buildq-job2-{os.getpid()}-bbbb"
    other = own["memory"] / "somebody-else"
    for directory in (dead, live, other):
        directory.mkdir()
    (own["pids"] / f"buildq-job1-{DEAD_PID}-aaaa").mkdir()
    layout = find_layout(fake.host, NO_CPU)
    assert sorted(layout.stale_groups()) == sorted(
        [dead, own["pids"] / f"buildq-job1-{DEAD_PID}-aaaa"]
    )
    removed = limits.remove_stale(BuildLimiter(Mechanism.CGROUP_V1, 0, layout))
    assert sorted(removed) == sorted([str(dead), str(own["pids"] / dead.name)])
    assert not dead.exists()
    assert live.exists()
    assert other.exists()


def test_group_names_carry_the_job_our_pid_and_a_random_suffix() -> None:
    first, second = group_name("0190abc"), group_name("0190abc")
    assert first.startswith(f"buildq-0190abc-{os.getpid()}-")
    assert first != second
    assert group_name("../../etc").startswith(f"buildq-______etc-{os.getpid()}-")


# --- choosing the mechanism ---------------------------------------------------


def test_a_probe_puts_a_real_process_in_the_group_and_removes_it(
    fake: FakeHost, kernel: None
) -> None:
    own = v1_host(fake)
    layout = find_layout(fake.host, NO_CPU)
    assert cgroups.probe(layout, NO_CPU) is None
    assert [p.name for p in own["memory"].iterdir() if p.name.startswith("buildq-")] == []


def test_auto_picks_cgroups_when_the_probe_works(fake: FakeHost, kernel: None) -> None:
    v1_host(fake)
    choice = choose("auto", NO_CPU, None, fake.host)
    assert choice.mechanism is Mechanism.CGROUP_V1
    assert summary(choice, NO_CPU) == "cgroup v1 (memory 64 MiB, pids 100, cpu unlimited)"


def test_auto_falls_back_to_rlimits_and_says_why(fake: FakeHost) -> None:
    fake.mount("cgroup", "sys/fs/cgroup/memory", "memory")
    fake.member_of("4:memory:/\n")
    choice = choose("auto", NO_CPU, None, fake.host)
    assert choice.mechanism is Mechanism.RLIMIT
    assert summary(choice, NO_CPU) == (
        "rlimit (RLIMIT_DATA 64 MiB; cgroups unavailable: "
        "no cgroup2 mount; no cgroup v1 pids hierarchy)"
    )


def test_cgroup_mode_never_silently_falls_back(fake: FakeHost) -> None:
    fake.mount("cgroup", "sys/fs/cgroup/memory", "memory")
    fake.member_of("4:memory:/\n")
    with pytest.raises(ConfigError, match="BUILDQ_BUILD_LIMITS=cgroup"):
        choose("cgroup", NO_CPU, None, fake.host)


def test_rlimit_mode_uses_no_cgroup(fake: FakeHost) -> None:
    v1_host(fake)
    choice = choose("rlimit", NO_CPU, None, fake.host)
    assert choice.mechanism is Mechanism.RLIMIT
    assert choice.layout is None


def test_the_limits_settings_are_validated() -> None:
    settings = load_settings(
        {"BUILDQ_BUILD_CPUS": "2.5", "BUILDQ_BUILD_LIMITS": "rlimit", "BUILDQ_BUILD_CGROUP": "/x"}
    )
    assert (settings.build_cpus, settings.build_limits) == (2.5, "rlimit")
    assert settings.build_cgroup == Path("/x")
    assert load_settings({}).build_limits == "auto"
    with pytest.raises(ConfigError, match="BUILDQ_BUILD_LIMITS"):
        load_settings({"BUILDQ_BUILD_LIMITS": "cgroupz"})
    with pytest.raises(ConfigError, match="BUILDQ_BUILD_CPUS"):
        load_settings({"BUILDQ_BUILD_CPUS": "-1"})


def test_doctor_reports_the_limits_builds_get() -> None:
    line = build_limits(load_settings({"BUILDQ_BUILD_LIMITS": "rlimit"}))
    assert line == (
        "build limits: rlimit (RLIMIT_DATA 4096 MiB; cgroups unavailable: "
        "BUILDQ_BUILD_LIMITS=rlimit)"
    )


def test_rlimits_warn_at_start_up() -> None:
    with capture_logs() as logs:
        limiter = limits.announce(load_settings({"BUILDQ_BUILD_LIMITS": "rlimit"}))
    assert limiter.mechanism is Mechanism.RLIMIT
    assert logs[-1]["event"] == "limits.weak"
    assert logs[-1]["log_level"] == "warning"
    assert logs[-1]["advice"].startswith("memory cap is RLIMIT_DATA: 4096 MiB")


# --- the launcher -----------------------------------------------------------


def spec_for(limiter: BuildLimiter, procs: list[str], tmp_path: Path) -> dict[str, object]:
    box = Sandbox(Level.PROCESS, network=True, max_procs=0, limiter=limiter)
    text = box.spec(
        cwd=str(tmp_path),
        workdir=tmp_path,
        uid=None,
        limits=LaunchLimits(60, 64 * MIB, MIB, None),
        cgroup_procs=procs,
    )
    return dict(json.loads(text))


def test_the_launcher_caps_data_not_address_space(tmp_path: Path) -> None:
    spec = spec_for(RLIMIT_ONLY, [], tmp_path)
    assert "as_bytes" not in spec
    assert spec["data_bytes"] == 64 * MIB
    assert spec["cgroup_procs"] == []
    with_group = spec_for(RLIMIT_ONLY, ["/sys/fs/cgroup/x/cgroup.procs"], tmp_path)
    assert with_group["data_bytes"] == 0  # the cgroup caps memory for the whole build
    assert "resource.RLIMIT_AS" not in LAUNCHER.read_text()


def run_launcher(spec: dict[str, object], command: str) -> subprocess.CompletedProcess[str]:
    spec_fd = launch_pipe(json.dumps(spec), command, {"PATH": "/usr/bin:/bin"})
    try:
        return subprocess.run(
            launcher_argv(spec_fd),
            env=LAUNCHER_ENV,
            pass_fds=(spec_fd,),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(spec_fd)


def test_the_launcher_joins_its_group_before_the_build_starts(tmp_path: Path) -> None:
    procs = [tmp_path / "memory.procs", tmp_path / "pids.procs"]
    spec = spec_for(RLIMIT_ONLY, [str(p) for p in procs], tmp_path)
    done = run_launcher(spec, "echo $PPID")
    assert done.returncode == 0, done.stderr
    launcher_pid = done.stdout.strip()  # the build shell's parent is the launcher
    assert [p.read_text() for p in procs] == [launcher_pid, launcher_pid]


def test_the_launcher_refuses_to_run_a_build_outside_its_group(tmp_path: Path) -> None:
    spec = spec_for(RLIMIT_ONLY, [str(tmp_path / "gone" / "cgroup.procs")], tmp_path)
    done = run_launcher(spec, f"touch {tmp_path / 'ran'}")
    assert done.returncode == 126
    assert "cannot join build cgroup" in done.stderr
    assert not (tmp_path / "ran").exists()


# --- out of memory ------------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        "bash: fork: Cannot allocate memory",
        "Traceback (most recent call last):\n  ...\nMemoryError",
        "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
        "fatal: Out of memory, malloc failed (tried to allocate 1048576 bytes)",
        "RangeError: WebAssembly.instantiate(): Out of memory: Cannot allocate Wasm memory",
    ],
)
def test_typical_allocation_failures_are_recognised(output: str) -> None:
    assert looks_out_of_memory(output)


@pytest.mark.parametrize("output", ["error TS2304: Cannot find name 'x'", "exit status 1", ""])
def test_other_failures_are_not_taken_for_out_of_memory(output: str) -> None:
    assert not looks_out_of_memory(output)


def test_the_out_of_memory_error_names_the_limit() -> None:
    assert str(BuildOutOfMemory(4096 * MIB)) == "build ran out of memory (limit 4096 MiB)"
