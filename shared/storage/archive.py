"""Source archives: walking a tree safely, packing it, and extracting it safely.

A source archive is a zstd-compressed tar of regular files only (sources shipped
before zstd are tar.gz, and are still read). Every entry of a tree is ``lstat``-ed
and every member of a tar stream is typed from its header, so a symlink is reported
and skipped, never followed (a repository may point one at ``/etc/passwd`` or
``/proc/self/environ``). Extraction admits only regular files and directories with
safe names (:func:`check_name`), under size and count caps, and creates each one
beneath its parent's directory fd with ``O_NOFOLLOW``: nothing it writes can land
outside the destination.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from shared.core.errors import DiskError, ValidationError, is_disk_fault
from shared.storage.digests import Digests, Stamp, stamp_of
from shared.storage.tarstream import END_OF_ARCHIVE, READ_BYTES, Kind, TarFormatError, TarReader

MAX_NAME_BYTES = 1024
SKIP_DIRS = frozenset({".git"})
ZSTD_LEVEL = 3  # 19.5 MB of tar in 0.14 s to 3.3 MB; gzip -6 took 0.9 s for 5.0 MB
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
MAX_OPEN_DIRS = 64
WRITE_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
UNSAFE_CHARACTER = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters, backslash

Skipped = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file found by :func:`walk_tree`."""

    rel: str
    path: str
    size: int
    stamp: Stamp | None = None  # as listed: for :meth:`Digests.trusted`


def check_name(rel: str) -> str:
    """``rel`` if it is a safe relative POSIX path, else ValidationError."""
    if not rel or len(rel.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ValidationError(f"path name empty or longer than {MAX_NAME_BYTES} bytes")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"path name is not valid UTF-8: {rel!r}") from None
    if UNSAFE_CHARACTER.search(rel):
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
    stack: list[tuple[str | Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in entries:
            rel = check_name(f"{prefix}{entry.name}")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in skip_dirs:
                    stack.append((entry.path, rel + "/"))
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
                yield Entry(rel, entry.path, st.st_size, stamp_of(st))
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


def compressor() -> zstandard.ZstdCompressor:
    """How source archives are compressed (with a checksum the reader verifies)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)


def pack(
    root: Path, dest: Path, *, max_files: int, max_bytes: int, on_skip: Skipped | None = None
) -> int:
    """Write the tree ``root`` (without ``.git``) to ``dest`` as a source archive;
    returns the file count. Ingest archives from git instead (:func:`repack`)."""
    count = 0
    with (
        dest.open("wb") as fh,
        compressor().stream_writer(fh, closefd=False) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in walk_tree(root, max_files=max_files, max_bytes=max_bytes, on_skip=on_skip):
            info = tarfile.TarInfo(entry.rel)
            st = os.lstat(entry.path)
            info.size = st.st_size
            info.mtime = int(st.st_mtime)
            info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
            with open(entry.path, "rb") as fh_in:
                tar.addfile(info, fh_in)
            count += 1
    return count


def repack(
    source: BinaryIO,
    dest: BinaryIO,
    *,
    max_files: int,
    max_bytes: int,
    on_skip: Skipped | None = None,
) -> int:
    """Copy the regular files of the tar stream ``source`` (``git archive``) to ``dest``
    as a source archive; returns the file count.

    The rules of :func:`walk_tree` hold: every name is checked, ``.git`` is left
    out, symlinks and other non-files are reported to ``on_skip`` and left out, and
    the caps count the bytes as written. Kept members are copied block for block.
    """
    files = total = 0
    reader = TarReader(source.read)
    with compressor().stream_writer(dest, closefd=False) as out:
        for member in reader:
            rel = check_name(member.name)
            if member.kind is Kind.DIRECTORY or SKIP_DIRS.intersection(rel.split("/")):
                continue  # directories are made as their files are extracted
            if member.kind is not Kind.FILE:
                if on_skip is not None:
                    on_skip(rel, member.kind.value)
                continue
            files += 1
            total += member.size
            if files > max_files:
                raise ValidationError(f"more than {max_files} files")
            if total > max_bytes:
                raise ValidationError(f"more than {max_bytes} bytes of files")
            out.write(member.header)
            for chunk in reader.raw():
                out.write(chunk)
        out.write(END_OF_ARCHIVE)
    return files


@contextlib.contextmanager
def decoded(fh: io.BufferedReader[Any]) -> Iterator[Callable[[int], bytes]]:
    """The ``read`` of the decompressed archive ``fh``: zstd, or gzip (older sources).

    The format is told from a ``peek``, so ``fh`` may be a stream that cannot seek."""
    magic = fh.peek(4)[:4]
    reader: zstandard.ZstdDecompressionReader | gzip.GzipFile
    if magic == ZSTD_MAGIC:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, closefd=False)
    elif magic.startswith(GZIP_MAGIC):
        reader = gzip.GzipFile(fileobj=fh, mode="rb")
    else:
        raise TarFormatError("neither zstd nor gzip")
    with reader:
        yield reader.read


def write_file(
    dir_fd: int,
    name: str,
    mode: int,
    mtime: int,
    chunks: Iterable[memoryview],
    *,
    digests: Digests | None = None,
) -> None:
    """Create (or truncate) the regular file ``name`` beneath ``dir_fd``, never through
    a symlink, with exactly ``mode`` (whatever the umask) and ``mtime``; its SHA-256
    goes into ``digests`` when given."""
    fd = os.open(name, WRITE_FILE, mode, dir_fd=dir_fd)
    digest = hashlib.sha256() if digests is not None else None
    try:
        for chunk in chunks:
            if digest is not None:
                digest.update(chunk)
            left = chunk
            while left:
                left = left[os.write(fd, left) :]
        os.fchmod(fd, mode)
        os.utime(fd, (mtime, mtime))
        if digests is not None and digest is not None:
            digests.take(fd, digest.hexdigest())
    finally:
        os.close(fd)


class _Dirs:
    """Directory fds beneath the destination, created on first use, opened with
    ``O_NOFOLLOW``; at most MAX_OPEN_DIRS are kept open."""

    def __init__(self, root: Path) -> None:
        self._root = os.open(root, OPEN_DIR)
        self._fds: dict[str, int] = {}

    def get(self, rel: str) -> int:
        if not rel:
            return self._root
        fd = self._fds.get(rel)
        if fd is None:
            parent_rel, _, name = rel.rpartition("/")
            parent = self.get(parent_rel)
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                fd = os.open(name, OPEN_DIR, dir_fd=parent)
            else:
                fd = os.open(name, OPEN_DIR, dir_fd=parent)
                os.fchmod(fd, 0o755)
            if len(self._fds) >= MAX_OPEN_DIRS:
                self.close(keep_root=True)
            self._fds[rel] = fd
        return fd

    def close(self, *, keep_root: bool = False) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if not keep_root:
            os.close(self._root)


def extract(archive: Path, dest: Path, *, max_files: int, max_bytes: int) -> int:
    """Extract the archive file ``archive`` into ``dest``: :func:`extract_stream`."""
    try:
        fh = archive.open("rb")
    except OSError as exc:
        raise _unreadable(exc) from exc
    with fh:
        return extract_stream(fh, dest, max_files=max_files, max_bytes=max_bytes)


def extract_stream(
    fh: io.BufferedReader[Any],
    dest: Path,
    *,
    max_files: int,
    max_bytes: int,
    digests: Digests | None = None,
) -> int:
    """Extract the archive read from ``fh`` (a file, or a download as it arrives)
    into ``dest`` refusing anything unsafe; returns the file count. With ``digests``,
    each file's SHA-256 is recorded as it is written, and the record sealed at the end.

    The stream is read to its end so that zstd verifies its checksum (gzip its CRC):
    a damaged archive never yields a partial, "successful" source.
    """
    dest.mkdir(parents=True, exist_ok=True)
    files = total = entries = 0
    try:
        with decoded(fh) as read:
            dirs = _Dirs(dest)
            try:
                reader = TarReader(read)
                for member in reader:
                    name = check_name(member.name)
                    if member.kind not in (Kind.FILE, Kind.DIRECTORY):
                        raise ValidationError(f"archive member {name!r} is not a file or directory")
                    entries += 1
                    if member.kind is Kind.FILE:
                        files += 1
                        total += member.size
                    if entries > 2 * max_files or files > max_files or total > max_bytes:
                        raise ValidationError(
                            f"archive exceeds {max_files} files or {max_bytes} bytes"
                        )
                    if member.kind is Kind.DIRECTORY:
                        dirs.get(name)
                        continue
                    parent, _, leaf = name.rpartition("/")
                    mode = 0o755 if member.mode & stat.S_IXUSR else 0o644
                    write_file(
                        dirs.get(parent), leaf, mode, member.mtime, reader.data(), digests=digests
                    )
            finally:
                dirs.close()
            while read(READ_BYTES):
                pass
        if digests is not None:
            digests.seal(dest)
    except TarFormatError as exc:
        raise ValidationError(f"source archive is corrupt or unreadable: {exc}") from exc
    except OSError as exc:
        raise _unreadable(exc) from exc
    except (zstandard.ZstdError, EOFError, zlib.error) as exc:
        raise ValidationError(f"source archive is corrupt or unreadable: {exc}") from exc
    return files


def _unreadable(exc: OSError) -> DiskError | ValidationError:
    """An OSError while extracting: the disk's (worth another try) or the archive's."""
    if is_disk_fault(exc):
        return DiskError(f"cannot extract the source here: {exc.strerror}")
    return ValidationError(f"source archive is corrupt or unreadable: {exc}")
