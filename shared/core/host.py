"""This machine and its processes, as far as telling an ended process from a live one
goes: which host, boot and pid namespace a process belongs to, and whether a pid
still names the process that registered it.

Linux only in full (``/proc``); elsewhere the boot id is unknown and nothing is ever
judged ended here (the stale-heartbeat timeout still applies). Every function reads
files or probes processes: call them in a worker thread.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
MACHINE_ID = Path("/etc/machine-id")
ENDED_STATES = frozenset("ZXx")  # zombie (killed, not yet reaped) and dead


@dataclass(frozen=True, slots=True)
class Host:
    """The host, kernel boot and pid namespace this process runs in."""

    host_id: str
    """``/etc/machine-id``, else the hostname."""
    boot_id: str
    """New on every boot of the kernel; empty where unknown."""
    pid_ns: str
    """Pids name the same processes only within one pid namespace (a container has
    its own); empty where unknown."""
    booted_at_ms: int
    """When the kernel booted (wall clock); 0 where unknown."""


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """One process, pinned down well enough to tell later whether it has ended."""

    host: Host
    pid: int
    started: int
    """When it started, in clock ticks after boot (``/proc/<pid>/stat``); 0 where
    unknown. A pid that now names a process with another start is a reused pid."""


def _read(path: Path) -> str:
    try:
        return path.read_text("ascii", errors="replace").strip()
    except OSError:
        return ""


def _booted_at_ms(stat: str) -> int:
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name == "btime" and value.strip().isdigit():
            return int(value) * 1000
    return 0


@functools.cache
def this_host() -> Host:
    """The host this process runs on (read once)."""
    try:
        pid_ns = os.readlink(PROC / "self" / "ns" / "pid")
    except OSError:
        pid_ns = ""
    return Host(
        host_id=_read(MACHINE_ID) or socket.gethostname(),
        boot_id=_read(PROC / "sys" / "kernel" / "random" / "boot_id"),
        pid_ns=pid_ns,
        booted_at_ms=_booted_at_ms(_read(PROC / "stat")),
    )


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start in ticks after boot) of ``pid``; None if unreadable."""
    text = _read(PROC / str(pid) / "stat")
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split
    # after its last ")"; starttime is field 22, the 20th after comm.
    fields = text[text.rfind(")") + 1 :].split()
    if len(fields) < 20 or not fields[19].isdigit():
        return None
    return fields[0], int(fields[19])


def locate(pid: int) -> ProcessRef:
    """The process ``pid`` of this host (its start unknown if it cannot be read)."""
    stat = _stat(pid)
    return ProcessRef(this_host(), pid, stat[1] if stat else 0)


def this_process() -> ProcessRef:
    """This process, as it registers itself."""
    return locate(os.getpid())


def process_ended(pid: int, started: int) -> bool:
    """Whether the process ``pid`` of this pid namespace that started at ``started``
    (0: unknown) has certainly ended: no such pid, a zombie, or a pid reused by a
    later process. False whenever that cannot be told for sure."""
    if pid <= 0:  # 0 and negatives address process groups, never one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, owned by another user
    stat = _stat(pid)
    if stat is None:  # ended since, or hidden from us (hidepid): tell next time
        return False
    state, start = stat
    return state in ENDED_STATES or (started > 0 and start != started)
