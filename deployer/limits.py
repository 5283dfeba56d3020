"""Resource limits for builds: one cgroup per build where the host allows it,
rlimits otherwise.

Mechanisms, strongest first (``shared/core/cgroups.py`` has the filesystem side):

- ``cgroup v2`` / ``cgroup v1``: a group per build with a hard memory cap and no
  swap beyond it, a process cap and (``BUILDQ_BUILD_CPUS``) a CPU quota. The
  launcher joins the group before it forks, unshares or drops its uid, so every
  process of the build is in it; afterwards the group's OOM-kill count says
  whether the build ran out of memory, and whatever is left is killed.
- ``rlimit``: ``RLIMIT_DATA`` caps each process's private writable memory (not
  ``RLIMIT_AS``, which counts address space that V8 and WebAssembly only reserve);
  a tree of processes can use several times the limit, and running out of
  memory is recognised only by the build's own error messages.

``auto`` (``BUILDQ_BUILD_LIMITS``) picks the strongest that a probe shows working.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import anyio
import anyio.to_thread
import structlog

from shared.core.cgroups import (
    Choice,
    Group,
    GroupLimits,
    Layout,
    Mechanism,
    choose,
    group_name,
    summary,
)
from shared.core.errors import ConfigError
from shared.core.settings import Settings

log = structlog.get_logger("limits")

# What a build prints when an allocation fails under RLIMIT_DATA (lower case).
OOM_SIGNATURES = (
    "cannot allocate memory",
    "memoryerror",
    "javascript heap out of memory",
    "out of memory",
)


def looks_out_of_memory(output: str) -> bool:
    """Whether a failed build's recent output shows a typical allocation failure."""
    text = output.lower()
    return any(signature in text for signature in OOM_SIGNATURES)


@dataclass(frozen=True, slots=True)
class BuildLimiter:
    """The probed mechanism, and the per-build groups it makes."""

    mechanism: Mechanism
    cpus: float = 0.0
    layout: Layout | None = None
    why_not: str = ""

    @property
    def uses_cgroups(self) -> bool:
        return self.layout is not None

    def open(self, label: str, memory_bytes: int, max_procs: int) -> Group | None:
        """(blocking) A fresh group for one build; None under rlimits."""
        if self.layout is None:
            return None
        return self.layout.create(
            group_name(label), GroupLimits(memory_bytes, max_procs, self.cpus)
        )

    async def start(self, label: str, memory_bytes: int, max_procs: int) -> Group | None:
        """:meth:`open` from async code."""
        if self.layout is None:
            return None
        return await anyio.to_thread.run_sync(self.open, label, memory_bytes, max_procs)

    async def finish(self, group: Group | None) -> int:
        """The group's OOM-kill count, after killing what is left and removing it
        (shielded: it runs on cancellation too)."""
        if group is None:
            return 0
        with anyio.CancelScope(shield=True):
            kills = await anyio.to_thread.run_sync(close_group, group)
        return kills


def close_group(group: Group) -> int:
    """(blocking) Read the OOM-kill count, empty the group and remove it."""
    kills = group.oom_kills()
    group.kill()
    try:
        group.remove()
    except OSError as exc:
        log.warning("limits.group_left", group=group.name, error=str(exc))
    return kills


RLIMIT_ONLY = BuildLimiter(Mechanism.RLIMIT, why_not="not configured")


@lru_cache(maxsize=8)
def _probe(settings: Settings) -> BuildLimiter:
    choice: Choice = choose(settings.build_limits, GroupLimits.of(settings), settings.build_cgroup)
    return BuildLimiter(choice.mechanism, settings.build_cpus, choice.layout, choice.why_not)


def probe(settings: Settings) -> BuildLimiter:
    """The mechanism builds use under ``settings`` (probed once per process; blocking).

    Raises ConfigError when ``BUILDQ_BUILD_LIMITS=cgroup`` and no cgroup works.
    """
    return _probe(settings)


def remove_stale(limiter: BuildLimiter) -> list[str]:
    """(blocking) Remove empty build groups a crashed deployer left behind."""
    removed: list[str] = []
    if limiter.layout is None:
        return removed
    for directory in limiter.layout.stale_groups():
        with contextlib.suppress(OSError):  # not empty (still running?) or gone already
            directory.rmdir()
            removed.append(str(directory))
    return removed


def describe(limiter: BuildLimiter, settings: Settings) -> str:
    """``cgroup v1 (memory 4096 MiB, pids 1024, cpu unlimited)`` and the like."""
    return summary(
        Choice(limiter.mechanism, limiter.layout, limiter.why_not), GroupLimits.of(settings)
    )


def announce(settings: Settings) -> BuildLimiter:
    """Detect and log the limits mechanism at start-up; warn when it is rlimits;
    remove stale build groups. Exits the process (status 2) when the configured
    mechanism cannot work here."""
    try:
        limiter = probe(settings)
    except ConfigError as exc:
        log.error("limits.unavailable", error=str(exc))
        raise SystemExit(2) from None
    removed = remove_stale(limiter)
    if removed:
        log.info("limits.stale_groups_removed", groups=removed)
    detail = describe(limiter, settings)
    if limiter.uses_cgroups:
        log.info("limits.ready", limits=limiter.mechanism.value, detail=detail)
    else:
        log.warning(
            "limits.weak",
            limits=limiter.mechanism.value,
            detail=detail,
            advice=f"memory cap is RLIMIT_DATA: {settings.build_memory_mb} MiB per process, "
            "not per build, and an out-of-memory build is recognised only by its output; "
            "run the deployer as root or give it a delegated cgroup (BUILDQ_BUILD_CGROUP)",
        )
    return limiter
