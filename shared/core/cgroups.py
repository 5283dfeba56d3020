"""Control groups for builds: find a hierarchy this process may use, create one
group per build with its limits, read its OOM-kill count, empty it and remove it.

Two layouts, strongest first:

- **v2**: one unified hierarchy. Build groups live in a parent with the memory,
  pids (and cpu) controllers enabled in its ``cgroup.subtree_control``: a
  delegated directory (``BUILDQ_BUILD_CGROUP``) or ``buildq`` at the root of the
  cgroup2 mount. v2's "no internal processes" rule: a group that hands
  controllers to children may hold no process itself, so the parent holds only
  build groups (the root is exempt, which is why the default parent sits there).
- **v1**: one hierarchy per controller (a hybrid host's cgroup2 mount has none of
  them). Build groups are children of this process's own group in each of the
  memory, pids (and cpu) hierarchies.

Pure filesystem logic with the root of ``/proc`` and ``/sys`` injectable, so it
runs against a fake tree in tests. Used by the deployer (``deployer/limits.py``)
and by ``buildq doctor``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from shared.core.errors import ConfigError
from shared.core.settings import Settings

PREFIX = "buildq-"
ORDER = ("memory", "pids", "cpu")  # the memory hierarchy first: it holds the OOM count
PERIOD_US = 100_000
MIB = 1024 * 1024
OPTIONAL = frozenset({"memory.swap.max", "memory.memsw.limit_in_bytes"})  # no swap accounting
EMPTY_WAIT_S = 5.0  # killed processes leave the group within milliseconds
RMDIR_WAIT_S = 2.0


class CgroupError(ConfigError):
    """Cgroups cannot limit builds on this host (the message says why)."""


class Mechanism(StrEnum):
    """How build resource limits are enforced, strongest first."""

    CGROUP_V2 = "cgroup v2"
    CGROUP_V1 = "cgroup v1"
    RLIMIT = "rlimit"


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """What a build group allows."""

    memory_bytes: int
    max_procs: int  # 0: no cap
    cpus: float  # 0: no cap

    @classmethod
    def of(cls, settings: Settings) -> GroupLimits:
        """The per-build limits ``settings`` ask for."""
        return cls(settings.build_memory_mb * MIB, settings.build_max_procs, settings.build_cpus)

    def describe(self) -> str:
        cpu = f"{self.cpus:g} CPUs" if self.cpus else "unlimited"
        pids = str(self.max_procs) if self.max_procs else "unlimited"
        return f"memory {self.memory_bytes // MIB} MiB, pids {pids}, cpu {cpu}"

    def controllers(self) -> tuple[str, ...]:
        return ORDER if self.cpus else ORDER[:2]


def _write(path: Path, value: str) -> None:
    with path.open("w") as fh:  # one write(2): cgroup files take one value per write
        fh.write(value)


def parse_key_count(text: str, key: str) -> int:
    """``N`` from a ``key N`` line of ``memory.events`` / ``memory.oom_control``."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _pids(procs: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(p) for p in procs.read_text().split()]
    return []


@dataclass(frozen=True, slots=True)
class Group:
    """One build's group: a directory per hierarchy (one in v2)."""

    version: int
    dirs: tuple[Path, ...]  # the memory hierarchy's first

    @property
    def name(self) -> str:
        return self.dirs[0].name

    @property
    def procs_files(self) -> list[str]:
        """Where a process writes its pid to join the group everywhere."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this group."""
        memory = self.dirs[0]
        file = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            return parse_key_count((memory / file).read_text(), "oom_kill")
        except FileNotFoundError:
            return 0

    def pids(self) -> list[int]:
        return sorted({pid for d in self.dirs for pid in _pids(d / "cgroup.procs")})

    def kill(self) -> None:
        """SIGKILL everything left in the group; return once it is empty (or after
        EMPTY_WAIT_S: a process stuck in the kernel cannot be waited for)."""
        deadline = time.monotonic() + EMPTY_WAIT_S
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        """Remove the group's directories (an emptied group may be busy briefly)."""
        for directory in self.dirs:
            deadline = time.monotonic() + RMDIR_WAIT_S
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where build groups are created: a parent directory per controller."""

    version: int
    parents: dict[str, Path] = field(hash=False)
    enable: tuple[Path, ...] = ()  # v2: subtree_control files to turn controllers on in

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism.CGROUP_V2 if self.version == 2 else Mechanism.CGROUP_V1

    def directories(self) -> list[Path]:
        """The distinct parent directories, the memory hierarchy's first."""
        return list(dict.fromkeys(self.parents[c] for c in sorted(self.parents, key=ORDER.index)))

    def prepare(self) -> None:
        """(v2) Create the parent and enable the controllers for its children."""
        if self.version != 2:
            return
        self.parents["memory"].mkdir(exist_ok=True)
        for control in self.enable:
            enabled: list[str] = []
            with contextlib.suppress(FileNotFoundError):  # a fresh parent: none yet
                enabled = control.read_text().split()
            missing = [n for n in self.parents if n not in enabled]
            if missing:
                try:
                    _write(control, " ".join(f"+{name}" for name in missing))
                except OSError as exc:
                    raise CgroupError(f"cannot enable {missing} in {control}: {exc}") from None

    def create(self, name: str, limits: GroupLimits) -> Group:
        """A new group ``name`` with ``limits`` applied; nothing is left on failure."""
        made: list[Path] = []
        try:
            for parent in self.directories():
                (parent / name).mkdir()
                made.append(parent / name)
            group = Group(self.version, tuple(made))
            for directory in made:
                self._apply(directory, limits)
        except OSError as exc:
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise CgroupError(f"cannot create build group {name}: {exc}") from None
        return group

    def _apply(self, directory: Path, limits: GroupLimits) -> None:
        quota = max(1000, round(limits.cpus * PERIOD_US))
        if self.version == 2:
            values = {"memory.max": str(limits.memory_bytes), "memory.swap.max": "0"}
            if limits.max_procs:
                values["pids.max"] = str(limits.max_procs)
            if limits.cpus:
                values["cpu.max"] = f"{quota} {PERIOD_US}"
        else:
            values = {"memory.limit_in_bytes": str(limits.memory_bytes)}
            # After the memory limit: memsw may never be below it. Equal means no swap.
            values["memory.memsw.limit_in_bytes"] = str(limits.memory_bytes)
            if limits.max_procs:
                values["pids.max"] = str(limits.max_procs)
            if limits.cpus:
                values["cpu.cfs_period_us"] = str(PERIOD_US)
                values["cpu.cfs_quota_us"] = str(quota)
        mine = {c for c, parent in self.parents.items() if directory.parent == parent}
        for file, value in values.items():
            path = directory / file
            if file.split(".")[0] not in mine or (file in OPTIONAL and not path.exists()):
                continue
            _write(path, value)  # a file the kernel did not create: OSError

    def stale_groups(self) -> Iterator[Path]:
        """Build groups whose deployer is gone (named ``buildq-…-<pid>-<random>``)."""
        for parent in self.directories():
            with contextlib.suppress(FileNotFoundError):
                for entry in parent.iterdir():
                    if entry.name.startswith(PREFIX) and entry.is_dir() and not _owner_alive(entry):
                        yield entry


def _owner_alive(entry: Path) -> bool:
    parts = entry.name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_name(label: str) -> str:
    """``buildq-<label>-<our pid>-<random>``: unique, and says whose it is."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in label)[:64] or "build"
    return f"{PREFIX}{safe}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Host:
    """Where this process reads its cgroup membership and the mounts (tests: a fake)."""

    proc: Path = Path("/proc/self")

    def mounts(self) -> list[tuple[str, str, Path, set[str]]]:
        """(fstype, mount root, mount point, super options) of every cgroup mount."""
        found = []
        for line in (self.proc / "mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                point = Path(fields[4].replace("\\040", " "))
                found.append((tail[0], fields[3], point, set(tail[2].split(","))))
        return found

    def own_groups(self) -> dict[str, str]:
        """Controller (``""`` for v2) → this process's group path."""
        groups: dict[str, str] = {}
        for line in (self.proc / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                groups[name] = path
        return groups


def find_layout(host: Host, limits: GroupLimits, parent: Path | None = None) -> Layout:
    """The layout builds can use here; raises CgroupError saying why there is none."""
    try:
        mounts = host.mounts()
        own = host.own_groups()
    except OSError as exc:
        raise CgroupError(f"cannot read cgroup mounts: {exc}") from None
    wanted = limits.controllers()
    unified = next((point for kind, _, point, _ in mounts if kind == "cgroup2"), None)
    why = ["no cgroup2 mount"]
    base = parent or unified
    if base is not None:
        try:
            available = set((base / "cgroup.controllers").read_text().split())
        except OSError as exc:
            raise CgroupError(f"{base} is not a cgroup2 directory: {exc}") from None
        missing = [c for c in wanted if c not in available]
        if not missing:
            if parent is not None:
                return Layout(
                    2, dict.fromkeys(wanted, parent), (parent / "cgroup.subtree_control",)
                )
            enable = (base / "cgroup.subtree_control", base / "buildq" / "cgroup.subtree_control")
            return Layout(2, dict.fromkeys(wanted, base / "buildq"), enable)
        if parent is not None:
            raise CgroupError(f"BUILDQ_BUILD_CGROUP {parent} lacks controllers {missing}")
        why = [f"cgroup2 at {base} lacks {', '.join(missing)}"]
    parents: dict[str, Path] = {}
    for name in wanted:
        mount = next(((r, p) for kind, r, p, o in mounts if kind == "cgroup" and name in o), None)
        if mount is None or name not in own:
            why.append(f"no cgroup v1 {name} hierarchy")
            continue
        rel = os.path.relpath(own[name], mount[0])
        parents[name] = mount[1] if rel == "." else mount[1] / rel
    if len(parents) == len(wanted):
        return Layout(1, parents)
    raise CgroupError("; ".join(why))


def probe(layout: Layout, limits: GroupLimits) -> str | None:
    """Create a group, put a child process in it, empty and remove it: None if
    that all works here, else why not."""
    try:
        layout.prepare()
        group = layout.create(group_name("probe"), limits)
    except (CgroupError, OSError) as exc:
        return str(exc)
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    problem = None
    try:
        for procs in group.procs_files:
            _write(Path(procs), str(child.pid))
        if child.pid not in group.pids():
            problem = "a process written to cgroup.procs did not join the group"
    except OSError as exc:
        problem = f"cannot move a process into {group.name}: {exc}"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        group.kill()
        try:
            group.remove()
        except OSError as exc:
            problem = problem or f"cannot remove {group.name}: {exc}"
    return problem


@dataclass(frozen=True, slots=True)
class Choice:
    """The mechanism picked for builds, and why cgroups are not it (if not)."""

    mechanism: Mechanism
    layout: Layout | None = None
    why_not: str = ""


def choose(mode: str, limits: GroupLimits, parent: Path | None, host: Host | None = None) -> Choice:
    """``auto``: the strongest mechanism a probe shows working; ``cgroup``: a
    cgroup layout or CgroupError; ``rlimit``: rlimits only."""
    if mode == "rlimit":
        return Choice(Mechanism.RLIMIT, None, "BUILDQ_BUILD_LIMITS=rlimit")
    try:
        layout = find_layout(host or Host(), limits, parent)
        problem = probe(layout, limits)
    except CgroupError as exc:
        problem = str(exc)
    if problem is None:
        return Choice(layout.mechanism, layout)
    if mode == "cgroup":
        raise CgroupError(f"BUILDQ_BUILD_LIMITS=cgroup, but cgroups are unavailable: {problem}")
    return Choice(Mechanism.RLIMIT, None, problem)


def report(settings: Settings) -> str:
    """(probes the host) The limits a deployer here would enforce, for ``buildq doctor``."""
    limits = GroupLimits.of(settings)
    try:
        choice = choose(settings.build_limits, limits, settings.build_cgroup)
    except CgroupError as exc:
        return f"none: a deployer here refuses to start ({exc})"
    return summary(choice, limits)


def summary(choice: Choice, limits: GroupLimits) -> str:
    """``cgroup v1 (memory 4096 MiB, pids 1024, cpu unlimited)`` and the like."""
    if choice.mechanism is Mechanism.RLIMIT:
        memory = limits.memory_bytes // MIB
        return f"rlimit (RLIMIT_DATA {memory} MiB; cgroups unavailable: {choice.why_not})"
    return f"{choice.mechanism.value} ({limits.describe()})"
