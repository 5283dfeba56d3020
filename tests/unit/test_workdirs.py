"""Deployer work directories: each records its owner; a starting deployer removes
those of deployers that have certainly ended, and nothing else."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from deployer.workdirs import (
    CLAIMED_AT,
    FS_IOC_GETFLAGS,
    FS_TOPDIR_FL,
    OWNER_FILE,
    claim,
    owner_ended,
    spread_children,
    sweep,
)
from shared.core.host import Host, locate, this_host, this_process
from shared.engine.workers import process_fields


def ended_process_owner() -> dict[str, object]:
    """The owner record of a real process that has ended (started, then reaped)."""
    proc = subprocess.Popen(["sleep", "5"])
    ref = locate(proc.pid)
    proc.kill()
    proc.wait()
    return {**process_fields(ref), CLAIMED_AT: 1}


def a_work_dir(root: Path, name: str, owner: dict[str, object] | None) -> Path:
    directory = root / name
    (directory / "job1" / "src").mkdir(parents=True)
    (directory / "job1" / "src" / "index.html").write_bytes(b"x" * 1000)
    if owner is not None:
        (directory / OWNER_FILE).write_text(json.dumps(owner))
    return directory


def test_claim_records_this_process_as_the_owner(tmp_path: Path) -> None:
    root = tmp_path / "work" / "deployer-a"

    claim(root)

    owner = json.loads((root / OWNER_FILE).read_text())
    me = this_process()
    assert (owner["pid"], owner["pid_start"], owner["host_id"]) == (
        os.getpid(),
        me.started,
        me.host.host_id,
    )
    assert not owner_ended(owner, this_host())


def test_the_directory_of_an_ended_deployer_is_removed_and_counted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    mine = work / "deployer-me"
    claim(mine)
    dead = a_work_dir(work, "deployer-dead", ended_process_owner())
    alive = work / "deployer-alive"
    claim(alive)  # this test process: alive

    swept = sweep(work, mine)

    assert swept.removed == ("deployer-dead",)
    assert swept.bytes >= 1000
    assert not dead.exists()
    assert mine.exists()
    assert alive.exists()


def test_what_cannot_be_told_for_sure_is_left_alone(tmp_path: Path) -> None:
    work = tmp_path / "work"
    mine = work / "deployer-me"
    claim(mine)
    ended = ended_process_owner()
    kept = [
        a_work_dir(work, "no-owner-file", None),
        a_work_dir(work, "other-host", {**ended, "host_id": "other", "boot_id": "other-boot"}),
        a_work_dir(work, "other-pid-namespace", {**ended, "pid_ns": "pid:[1]"}),
        a_work_dir(work, "start-unknown", {**ended, "pid_start": 0}),
    ]
    (work / "garbled").mkdir()
    (work / "garbled" / OWNER_FILE).write_text("{not json")
    kept.append(work / "garbled")

    swept = sweep(work, mine)

    assert swept.removed == ()
    assert all(path.exists() for path in kept)


def test_a_deployer_of_this_machine_before_its_last_boot_has_ended() -> None:
    host = Host("machine", "boot-now", "pid:[4026531836]", booted_at_ms=1_000)
    owner = {"host_id": "machine", "boot_id": "boot-before", "pid_ns": "x", "pid": "1"}

    assert owner_ended({**owner, CLAIMED_AT: 500}, host)
    # Claimed after this boot under another boot id: a clone of this machine elsewhere.
    assert not owner_ended({**owner, CLAIMED_AT: 2_000}, host)


def test_a_missing_work_dir_sweeps_nothing(tmp_path: Path) -> None:
    assert sweep(tmp_path / "absent", tmp_path / "absent" / "me").removed == ()


def topdir_flag(path: Path) -> bool | None:
    """Whether ``path`` carries ext4's TOPDIR flag; None where flags cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(4)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    except OSError:
        return None
    finally:
        os.close(fd)
    return bool(int.from_bytes(flags, sys.byteorder) & FS_TOPDIR_FL)


def test_a_claimed_directory_spreads_its_job_directories_where_the_filesystem_can(
    tmp_path: Path,
) -> None:
    root = tmp_path / "deployer-1"
    claim(root)
    marked = topdir_flag(root)
    # ext2/3/4 take the flag; elsewhere (tmpfs, xfs) nothing changes, and it says so.
    assert spread_children(root) is (marked is True)
    assert (root / OWNER_FILE).is_file()
    if marked is not None:
        assert spread_children(tmp_path / "missing") is False
