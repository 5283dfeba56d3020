"""The deployers' work directories: ``<work_dir>/<worker id>/`` per deployer process,
one job directory in it per running job.

A deployer that stops removes its own. One that is killed (SIGKILL, OOM, power) cannot:
its sources, build output and caches would stay on disk for good. So each deployer
writes who it is (``.owner``: host, boot, pid namespace, pid and start time) into its
directory, and a deployer starting on the same work directory removes the
directories of deployers that have certainly ended: same host and pid namespace, and
an earlier boot or a pid that is gone or names a later process. Anything that cannot
be told for sure is left alone (another host sharing the disk, another container's
pid namespace, a directory being created right now). Call these in a worker thread.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shared.core.host import Host, process_ended, this_host, this_process
from shared.engine.recovery import PROCESS_FIELDS, Reach, Registered, reach
from shared.engine.workers import process_fields

OWNER_FILE = ".owner"
CLAIMED_AT = "claimed_at_ms"  # for an owner record, what a heartbeat is to a worker


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep removed: deployer directories, and the bytes they held."""

    removed: tuple[str, ...]
    bytes: int


def claim(root: Path) -> None:
    """Create this process's work directory ``root`` and record its owner (the fields a
    worker registers for same-host recovery, and when)."""
    root.mkdir(parents=True, exist_ok=True)
    owner = {**process_fields(this_process()), CLAIMED_AT: int(time.time() * 1000)}
    tmp = root / f"{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(owner), "utf-8")
    tmp.replace(root / OWNER_FILE)


def owner_ended(owner: dict[str, object], host: Host) -> bool:
    """Whether the deployer described by ``owner`` (an ``.owner`` file) has certainly
    ended, seen from ``host``: judged as same-host recovery judges a worker."""
    values = [owner.get(name) for name in PROCESS_FIELDS]
    claimed = owner.get(CLAIMED_AT)
    who = Registered.parse(
        "",
        claimed if isinstance(claimed, int) else 0,
        [None if v is None else str(v) for v in values],
    )
    found = reach(who, host)
    if found is Reach.REBOOTED:
        return True
    return found is Reach.PROBE and who.pid_start > 0 and process_ended(who.pid, who.pid_start)


def _read_owner(directory: Path) -> dict[str, object] | None:
    try:
        owner = json.loads((directory / OWNER_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None  # not ours, an older version's, or still being created
    return owner if isinstance(owner, dict) else None


def _size(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.lstat().st_size
        except OSError:
            continue
    return total


def sweep(work_dir: Path, keep: Path) -> Swept:
    """Remove the work directories under ``work_dir`` of deployers that have ended
    (never ``keep``, this process's own)."""
    host = this_host()
    removed: list[str] = []
    freed = 0
    try:
        entries = list(work_dir.iterdir())
    except OSError:
        return Swept((), 0)
    for entry in entries:
        if entry == keep or entry.is_symlink() or not entry.is_dir():
            continue
        owner = _read_owner(entry)
        if owner is None or not owner_ended(owner, host):
            continue
        freed += _size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry.name)
    return Swept(tuple(sorted(removed)), freed)
