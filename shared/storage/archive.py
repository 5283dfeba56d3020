"""Source archives: walking a tree safely, packing it, and extracting it safely.

Only regular files and directories ever travel. Every entry is ``lstat``-ed, so a
symlink is reported and skipped, never followed (a repository may point one at
``/etc/passwd`` or ``/proc/self/environ``). Extraction admits only regular files
and directories whose resolved path stays inside the destination, with size and
count caps, and applies tarfile's ``data`` filter as well.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.core.errors import DiskError, ValidationError, is_disk_fault

MAX_NAME_BYTES = 1024
SKIP_DIRS = frozenset({".git"})

Skipped = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file found by :func:`walk_tree`."""

    rel: str
    path: Path
    size: int


def check_name(rel: str) -> str:
    """``rel`` if it is a safe relative POSIX path, else ValidationError."""
    if not rel or len(rel.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ValidationError(f"path name empty or longer than {MAX_NAME_BYTES} bytes")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"path name is not valid UTF-8: {rel!r}") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in rel) or "\\" in rel:
        raise ValidationError(f"path name has a control character or backslash: {rel!r}")
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValidationError(f"path name is not a plain relative path: {rel!r}")
    return rel


def walk_tree(
    root: Path,
    *,
    max_files: int,
    max_bytes: int,
    skip_dirs: frozenset[str] = SKIP_DIRS,
    on_skip: Skipped | None = None,
) -> Iterator[Entry]:
    """Yield every regular file under ``root`` in a stable order, never following links.

    Symlinks, hard-linked files and special files are reported to ``on_skip`` and
    left out. Raises ValidationError past ``max_files`` or ``max_bytes``, or on a
    bad name.
    """
    files = total = 0
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in entries:
            rel = check_name(f"{prefix}{entry.name}")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in skip_dirs:
                    stack.append((Path(entry.path), rel + "/"))
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                # A hard link may share its inode with a file outside the tree.
                if on_skip is not None:
                    on_skip(rel, "hard link")
            elif stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
                if files > max_files:
                    raise ValidationError(f"more than {max_files} files")
                if total > max_bytes:
                    raise ValidationError(f"more than {max_bytes} bytes of files")
                yield Entry(rel, Path(entry.path), st.st_size)
            elif on_skip is not None:
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "special file"
                on_skip(rel, kind)


OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not hang the open.
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_root(root: Path) -> int:
    """A directory fd for ``root`` (not a symlink), for :func:`open_entry`."""
    try:
        return os.open(root, OPEN_DIR)
    except OSError as exc:
        raise ValidationError(f"cannot open {root.name!r} as a directory: {exc.strerror}") from exc


def _open_at(parent: int, name: str, flags: int) -> int:
    """``name`` opened relative to ``parent``, which is closed either way."""
    try:
        return os.open(name, flags, dir_fd=parent)
    finally:
        os.close(parent)


def open_entry(root_fd: int, entry: Entry) -> int:
    """Open ``entry`` (found by :func:`walk_tree`) beneath ``root_fd`` for reading.

    Every component is opened relative to its parent's fd with ``O_NOFOLLOW``, and
    the file must still be a regular file with no other link, of the size walked:
    a file swapped for a symlink (to ``/etc/shadow``), a FIFO or a hard link after
    the walk is refused with ValidationError instead of read.
    """
    *dirs, name = check_name(entry.rel).split("/")
    changed = f"output file {entry.rel!r} changed after it was listed"
    try:
        fd = os.dup(root_fd)
        for part in dirs:
            fd = _open_at(fd, part, OPEN_DIR)
        fd = _open_at(fd, name, OPEN_FILE)
    except OSError as exc:
        raise ValidationError(f"{changed}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != entry.size:
        os.close(fd)
        raise ValidationError(changed)
    return fd


def pack(
    root: Path, dest: Path, *, max_files: int, max_bytes: int, on_skip: Skipped | None = None
) -> int:
    """Write ``root`` (without ``.git``) to ``dest`` as tar.gz; returns the file count."""
    count = 0
    with tarfile.open(dest, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for entry in walk_tree(root, max_files=max_files, max_bytes=max_bytes, on_skip=on_skip):
            info = tarfile.TarInfo(entry.rel)
            st = entry.path.lstat()
            info.size = st.st_size
            info.mtime = int(st.st_mtime)
            info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
            with entry.path.open("rb") as fh:
                tar.addfile(info, fh)
            count += 1
    return count


def extract(archive: Path, dest: Path, *, max_files: int, max_bytes: int) -> int:
    """Extract ``archive`` into ``dest`` refusing anything unsafe; returns the file count."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    files = total = entries = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name.rstrip("/") if member.isdir() else member.name
                check_name(str(PurePosixPath(name)) if name else "")
                if not (member.isfile() or member.isdir()):
                    raise ValidationError(f"archive member {name!r} is not a file or directory")
                target = (dest / name).resolve()
                if not target.is_relative_to(dest):
                    raise ValidationError(f"archive member {name!r} escapes the destination")
                entries += 1
                if member.isfile():
                    files += 1
                    total += member.size
                if entries > 2 * max_files or files > max_files or total > max_bytes:
                    raise ValidationError(f"archive exceeds {max_files} files or {max_bytes} bytes")
                tar.extract(member, dest, filter="data")
            # tarfile stops at the first unreadable header as if it were the end;
            # reading the stream to EOF makes gzip verify its CRC32 and length.
            assert tar.fileobj is not None
            while tar.fileobj.read(1 << 20):
                pass
    except OSError as exc:
        if is_disk_fault(exc):  # the disk, not the archive: worth another try
            raise DiskError(f"cannot extract the source here: {exc.strerror}") from exc
        raise ValidationError(f"source archive is corrupt or unreadable: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ValidationError(f"source archive is corrupt or unreadable: {exc}") from exc
    return files
