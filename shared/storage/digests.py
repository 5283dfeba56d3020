"""Content digests taken while files are written, so a publish need not read them again.

Extraction hashes each file (SHA-256) from the bytes it writes anyway, and records it
under the file's *stamp*: device, inode, size, mtime and ctime right after the write.
It then *seals* the record: the ctime of a new, nameless file (``O_TMPFILE``) made
after the last write. Later, a file whose stamp is the recorded one and whose ctime is
older than the seal has not been touched since it was written, and its digest is
trusted instead of reading it.

Why that holds, as git's index holds: the kernel sets a file's ctime to the current
time on every write, truncation, chmod, utime, link or rename of it, and nothing in
user space can set it back; so any change made after the seal leaves a ctime at or
after the seal's. A file recorded in the seal's own clock tick could not be told from
one changed later in that tick (git's "racily clean" entries): the seal is made again
once the clock has moved on, or the file is left out.
Each file's inode is part of its stamp: a file replaced by another (a rename over it,
a new file on a freed inode) has a new ctime too. If no seal can be made (a
filesystem without ``O_TMPFILE``), nothing is trusted and every file is read.

When the deployer itself changes files between extraction and publish (it hands the
tree to the build's uid and takes it back), it *carries* each trusted digest to the
file's new stamp and seals again: only what was trusted before the change and is
carried across it stays trusted.

What a wrong trust would cost is bounded anyway: a file the build left unchanged is
published with the content it was extracted with, which is the repository's own.
"""

from __future__ import annotations

import os
import time

Stamp = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns

SEAL_FLAGS = os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0)
MAX_DIGESTS = 20_000  # ~390 bytes each: a bigger source's other files are read at publish
SEAL_WAIT_S = 0.05  # at most, for the clock to pass the last file recorded
SEAL_POLL_S = 0.001


def stamp_of(st: os.stat_result) -> Stamp:
    """The stamp of a file, from its ``stat``."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Digests:
    """The SHA-256 digests of files written by one extraction, keyed by stamp."""

    def __init__(self) -> None:
        self._pending: dict[Stamp, str] = {}
        self._trusted: dict[Stamp, str] = {}
        self._sealed_ns = 0  # none yet: nothing is trusted

    def __len__(self) -> int:
        return len(self._trusted)

    def take(self, fd: int, digest: str) -> None:
        """Record ``digest`` for the file open as ``fd``, just written in full (its
        mtime and mode already set: any later change moves its ctime). Trusted from
        the next :meth:`seal`. Past MAX_DIGESTS files, nothing more is recorded."""
        if len(self._pending) < MAX_DIGESTS:
            self._pending[stamp_of(os.fstat(fd))] = digest

    def carry(self, before: os.stat_result, after: os.stat_result) -> None:
        """The deployer itself changed a file's metadata (its owner, for the build's
        uid): a digest trusted for it ``before`` is kept for it ``after``, trusted
        from the next :meth:`seal`."""
        digest = self.trusted(stamp_of(before))
        if digest is not None:
            self._pending[stamp_of(after)] = digest

    def seal(self, directory: int | str | os.PathLike[str]) -> None:
        """Trust what was recorded since the last seal, and only that, for as long as
        the files are untouched; made on the filesystem of ``directory`` (a path or a
        directory fd). Without ``O_TMPFILE`` there, nothing is trusted.

        Files recorded in the seal's own clock tick (a coarse tick is 1-10 ms) are
        sealed again a tick later, once (only the deployer writes to them meanwhile);
        any still in it then are left out."""
        pending, self._pending = self._pending, {}
        sealed = _now_on(directory)
        latest = max((stamp[4] for stamp in pending), default=0)
        deadline = time.monotonic() + SEAL_WAIT_S
        while sealed and latest >= sealed and time.monotonic() < deadline:
            time.sleep(SEAL_POLL_S)
            sealed = _now_on(directory)
        self._trusted = {s: d for s, d in pending.items() if s[4] < sealed}
        self._sealed_ns = sealed

    def trusted(self, stamp: Stamp | None) -> str | None:
        """The digest of the file stamped ``stamp`` if it is known and untouched since
        it was recorded; None to read and hash it."""
        if stamp is None or stamp[4] >= self._sealed_ns:
            return None
        return self._trusted.get(stamp)


def _now_on(directory: int | str | os.PathLike[str]) -> int:
    """The filesystem's clock: the ctime of a new, nameless file in ``directory``;
    0 where none can be made."""
    try:
        if isinstance(directory, int):
            fd = os.open(".", SEAL_FLAGS, 0o600, dir_fd=directory)
        else:
            fd = os.open(directory, SEAL_FLAGS, 0o600)
    except OSError:
        return 0
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
