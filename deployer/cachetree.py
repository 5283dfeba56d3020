"""Dependency cache trees (``node_modules``, a package manager's cache): walked,
packed into a zstd tar and extracted again, symlinks included, never unsafely.

A symlink is kept only if it cannot lead out of its tree (:func:`safe_link`):
relative, every ``..`` at its start and no more of them than the link is deep, no
``.`` or ``..`` after the first name. A name below a directory can then only go
down, and every link it meets is of the same kind, so no chain of links in the tree
resolves outside it (``a/b/c/l -> ../../..`` plus ``m -> a/b/c/l/..`` would: the
second is refused). Extraction admits only checked names, regular files,
directories and such links; it creates everything beneath directory fds opened
with ``O_NOFOLLOW`` and makes the links last, so nothing it writes passes through
one. An archive starts with a header naming its service, kind and key; extraction
refuses an archive whose header is not the one expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from shared.core.errors import ValidationError
from shared.storage.archive import check_name, compressor, decoded, write_file
from shared.storage.tarstream import (
    BLOCK_BYTES,
    READ_BYTES,
    Kind,
    Member,
    TarFormatError,
    TarReader,
    number,
    pax_records,
)

HEADER_NAME = ".buildq-cache.json"
MAX_HEADER_BYTES = 4096
MAX_LINK_BYTES = 1024
MAX_OPEN_DIRS = 64
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class CacheTooLarge(ValidationError):
    """A tree (or an archive) holds more than the cache's bound."""


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of a cache tree: a regular file, a directory or a safe symlink."""

    rel: str
    kind: Kind
    size: int = 0
    mtime: int = 0
    executable: bool = False
    target: str = ""  # a symlink's
    inode: tuple[int, int] = (0, 0)  # a file's (st_dev, st_ino)
    nlink: int = 1


@dataclass(frozen=True, slots=True)
class Seen:
    """What a restored entry was, to tell later whether the build changed it."""

    kind: Kind
    size: int
    mtime: int
    executable: bool
    fingerprint: str  # a file's content digest, a symlink's target


Snapshot = dict[str, Seen]

# What a package manager rewrites on every install although the tree it describes is
# the same (npm's hidden lockfile lists what it saw, pnpm's state has a timestamp):
# present or not counts, its bytes do not. A stale one is only a hint to the manager,
# which checks it against the tree (npm ignores a hidden lockfile older than any
# package folder).
STATE_FILES = frozenset(
    {
        "node_modules/.package-lock.json",
        "node_modules/.modules.yaml",
        "node_modules/.yarn-state.yml",
        "node_modules/.yarn-integrity",
    }
)


def safe_link(rel: str, target: str) -> bool:
    """Whether a symlink at ``rel`` (in its tree) to ``target`` stays in the tree."""
    if not target or len(target.encode("utf-8", "surrogateescape")) > MAX_LINK_BYTES:
        return False
    if target.startswith("/") or "\\" in target or any(ord(c) < 32 for c in target):
        return False
    parts = target.rstrip("/").split("/")
    ups = next((i for i, p in enumerate(parts) if p != ".."), len(parts))
    if ups > rel.count("/"):
        return False
    return all(p not in ("", ".", "..") for p in parts[ups:])


def walk(root: Path, top: str, *, max_bytes: int, max_entries: int) -> tuple[list[Node], int]:
    """Every entry under ``root/top`` (``top`` "" for the whole tree) in a stable
    order, never following links; returns the entries and how many unsafe links or
    special files were left out. CacheTooLarge past ``max_bytes`` or ``max_entries``."""
    nodes: list[Node] = []
    left_out = total = 0
    start = root / top if top else root
    steps = [*reversed(Path(top).parents)][1:] if top else []
    for step in [*steps, Path(top)] if top else []:
        try:
            mode = os.lstat(root / step).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISDIR(mode):
            return [], 0  # missing, or a link: nothing to keep
    stack = [(start, f"{top}/" if top else "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in entries:
            rel = check_name(f"{prefix}{entry.name}")
            st = entry.stat(follow_symlinks=False)
            if len(nodes) >= max_entries:
                raise CacheTooLarge(f"more than {max_entries} entries")
            if stat.S_ISDIR(st.st_mode):
                nodes.append(Node(rel, Kind.DIRECTORY, mtime=int(st.st_mtime)))
                stack.append((Path(entry.path), rel + "/"))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > max_bytes:
                    raise CacheTooLarge(f"more than {max_bytes // (1024 * 1024)} MB")
                nodes.append(
                    Node(
                        rel,
                        Kind.FILE,
                        st.st_size,
                        int(st.st_mtime),
                        bool(st.st_mode & stat.S_IXUSR),
                        inode=(st.st_dev, st.st_ino),
                        nlink=st.st_nlink,
                    )
                )
            elif stat.S_ISLNK(st.st_mode) and safe_link(rel, os.readlink(entry.path)):
                nodes.append(Node(rel, Kind.SYMLINK, target=os.readlink(entry.path)))
            else:
                left_out += 1
    return nodes, left_out


def shared_inodes(nodes: Iterable[Node]) -> set[tuple[int, int]]:
    """Files linked from outside the walked trees: more links than were walked.

    A hard link inside the trees (pnpm links its store into ``node_modules``) is
    kept; one to any other inode (``ln /etc/shadow node_modules/x``) is left out."""
    seen: dict[tuple[int, int], int] = {}
    nlinks: dict[tuple[int, int], int] = {}
    for node in nodes:
        if node.kind is Kind.FILE and node.nlink > 1:
            seen[node.inode] = seen.get(node.inode, 0) + 1
            nlinks[node.inode] = node.nlink
    return {inode for inode, count in seen.items() if count < nlinks[inode]}


def tree_bytes(nodes: Iterable[Node]) -> int:
    return sum(node.size for node in nodes)


def _digest(chunks: Iterable[bytes | memoryview]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _read_chunks(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, READ_BYTES):
        yield chunk


def _open_file(root: Path, node: Node) -> int:
    """``node`` opened for reading, refused unless it is still the file walked (the
    build's processes are gone by now, so only a bug or a race of ours changes it)."""
    fd = os.open(root / node.rel, OPEN_FILE)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino, st.st_size) != (
        *node.inode,
        node.size,
    ):
        os.close(fd)
        raise ValidationError(f"cache file {node.rel!r} changed while it was packed")
    return fd


def changed(root: Path, before: Snapshot | None, nodes: list[Node]) -> bool:
    """Whether ``nodes`` differ from what was restored: a file whose size and mtime
    match is taken as unchanged; one rewritten with the same bytes is compared by
    content; a package manager's state file (:data:`STATE_FILES`) only by presence."""
    if before is None or len(before) != len(nodes):
        return True
    for node in nodes:
        seen = before.get(node.rel)
        if seen is not None and node.rel in STATE_FILES and seen.kind is node.kind:
            continue
        if seen is None or (seen.kind, seen.size, seen.executable) != (
            node.kind,
            node.size,
            node.executable,
        ):
            return True
        if node.kind is Kind.SYMLINK and seen.fingerprint != node.target:
            return True
        if node.kind is Kind.FILE and seen.mtime != node.mtime:
            fd = _open_file(root, node)
            try:
                if _digest(_read_chunks(fd)) != seen.fingerprint:
                    return True
            finally:
                os.close(fd)
    return False


def pack(root: Path, nodes: Iterable[Node], dest: Path, header: Mapping[str, str]) -> None:
    """Write ``nodes`` (from :func:`walk` under ``root``) to ``dest``, after ``header``."""
    with (
        dest.open("wb") as fh,
        compressor().stream_writer(fh, closefd=False) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        head = json.dumps(dict(header), sort_keys=True).encode()
        info = tarfile.TarInfo(HEADER_NAME)
        info.size = len(head)
        tar.addfile(info, _BytesReader(head))
        for node in nodes:
            info = tarfile.TarInfo(node.rel)
            info.mtime = node.mtime
            if node.kind is Kind.DIRECTORY:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif node.kind is Kind.SYMLINK:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, node.target, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = node.size, 0o755 if node.executable else 0o644
                fd = _open_file(root, node)
                with os.fdopen(fd, "rb") as fh_in:
                    tar.addfile(info, fh_in)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, n: int = -1) -> bytes:
        taken, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return taken


def link_target(member: Member) -> str:
    """A symlink member's target, from its pax ``linkpath`` or its ustar header."""
    block = member.header[-BLOCK_BYTES:]
    if len(member.header) > BLOCK_BYTES:  # a pax extension header precedes it
        size = number(member.header[124:136])
        pax = pax_records(member.header[BLOCK_BYTES : BLOCK_BYTES + size])
        if "linkpath" in pax:
            return pax["linkpath"].decode("utf-8", "surrogateescape")
    return block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _Dirs:
    """Directory fds beneath ``root`` (created on first use, opened ``O_NOFOLLOW``)."""

    def __init__(self, root: Path) -> None:
        self.fds: dict[str, int] = {"": os.open(root, OPEN_DIR)}

    def get(self, rel: str) -> int:
        fd = self.fds.get(rel)
        if fd is None:
            parent_rel, _, name = rel.rpartition("/")
            parent = self.get(parent_rel)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, OPEN_DIR, dir_fd=parent)
            if len(self.fds) >= MAX_OPEN_DIRS:  # keep the root: reopened ones follow no link
                for other in [r for r in self.fds if r and r != parent_rel]:
                    os.close(self.fds.pop(other))
            self.fds[rel] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _hashing(chunks: Iterable[memoryview], digest: Any) -> Iterator[memoryview]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def extract(
    archive: Path,
    dest: Path,
    header: Mapping[str, str],
    *,
    tops: tuple[str, ...],
    max_bytes: int,
    max_entries: int,
) -> Snapshot:
    """Extract a cache archive into ``dest`` (which must exist), refusing anything
    unsafe with ValidationError; returns what it wrote. ``header`` must match the
    archive's; every name must lie under one of ``tops`` ("" for anywhere)."""
    try:
        with archive.open("rb") as fh, decoded(fh) as read:
            snapshot = _extract(
                TarReader(read),
                dest,
                header,
                tops=tops,
                max_bytes=max_bytes,
                max_entries=max_entries,
            )
            while read(READ_BYTES):  # to the end, so that zstd checks its checksum
                pass
            return snapshot
    except (TarFormatError, zstandard.ZstdError, EOFError, zlib.error) as exc:
        raise ValidationError(f"cache archive is corrupt: {exc}") from exc


def _check_header(reader: TarReader, header: Mapping[str, str]) -> None:
    first = next(reader, None)
    if first is None or first.name != HEADER_NAME or first.kind is not Kind.FILE:
        raise ValidationError("cache archive has no header")
    if first.size > MAX_HEADER_BYTES:
        raise ValidationError("cache archive header is too large")
    raw = b"".join(bytes(chunk) for chunk in reader.data())
    try:
        found = json.loads(raw)
    except ValueError:
        raise ValidationError("cache archive header is not JSON") from None
    if found != dict(header):
        raise ValidationError(f"cache archive is for {found!r}, not {dict(header)!r}")


def _extract(
    reader: TarReader,
    dest: Path,
    header: Mapping[str, str],
    *,
    tops: tuple[str, ...],
    max_bytes: int,
    max_entries: int,
) -> Snapshot:
    _check_header(reader, header)
    snapshot: Snapshot = {}
    links: list[tuple[str, str]] = []
    dir_times: list[tuple[str, int]] = []
    total = 0
    dirs = _Dirs(dest)
    try:
        for member in reader:
            name = check_name(member.name)
            if not any(name == t or name.startswith(f"{t}/") or not t for t in tops):
                raise ValidationError(f"cache member {name!r} is outside {', '.join(tops)}")
            if name in snapshot or len(snapshot) >= max_entries:
                raise ValidationError(f"cache member {name!r} repeated, or too many members")
            executable = bool(member.mode & stat.S_IXUSR)
            if member.kind is Kind.DIRECTORY:
                dirs.get(name)
                dir_times.append((name, member.mtime))
                snapshot[name] = Seen(Kind.DIRECTORY, 0, member.mtime, False, "")
            elif member.kind is Kind.SYMLINK:
                target = link_target(member)
                if not safe_link(name, target):
                    raise ValidationError(f"cache symlink {name!r} -> {target!r} leaves its tree")
                links.append((name, target))
                snapshot[name] = Seen(Kind.SYMLINK, 0, 0, False, target)
            elif member.kind is Kind.FILE:
                total += member.size
                if total > max_bytes:
                    raise CacheTooLarge(f"cache archive holds more than {max_bytes} bytes")
                parent, _, leaf = name.rpartition("/")
                mode = 0o755 if executable else 0o644
                digest = hashlib.blake2b(digest_size=16)
                chunks = _hashing(reader.data(), digest)
                write_file(dirs.get(parent), leaf, mode, member.mtime, chunks)
                snapshot[name] = Seen(
                    Kind.FILE, member.size, member.mtime, executable, digest.hexdigest()
                )
            else:
                raise ValidationError(f"cache member {name!r} is a {member.kind.value}")
        for name, target in links:  # last: nothing above was written through a link
            parent, _, leaf = name.rpartition("/")
            os.symlink(target, leaf, dir_fd=dirs.get(parent))
        for name, mtime in reversed(dir_times):  # deepest first, after their contents
            parent, _, leaf = name.rpartition("/")
            os.utime(leaf, (mtime, mtime), dir_fd=dirs.get(parent), follow_symlinks=False)
    finally:
        dirs.close()
    return snapshot
