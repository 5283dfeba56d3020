"""A bucket in a local directory: :class:`~shared.storage.objects.Storage` on one
host's disk, as durable as the embedded Redis (``buildq up``'s default).

Layout: ``<root>/<bucket>/`` holds one directory per key segment and one file per
object, named ``<last segment>~``. Segments are percent-encoded where they could
collide (``%``, ``~`` and a leading ``.``), so a file name never names a directory
(``a`` and ``a/b`` can both be keys, as in S3) and names starting with ``.`` are free
for temporary files.

An object's file is its bytes followed by a fixed TRAILER_BYTES trailer (its
Content-Type and ETag as JSON, space-padded, then MAGIC): data and metadata are
replaced together by one rename, and an object's size is its file's size less the
trailer, so a listing costs a stat per object. Writes go to a temporary file in the
same directory, are fsynced, renamed over the object and the directory is fsynced:
a crash leaves the old object or the new one, never a mix.

The directory serves one host only: deployers elsewhere need S3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import hashlib
import json
import os
import string
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread

from shared.core.errors import StorageError
from shared.storage.objects import (
    INLINE_BYTES,
    STREAM_CHUNK_BYTES,
    Blob,
    InvalidKeyError,
    ObjectNotFound,
    RangeNotSatisfiable,
    StoredObject,
    check_key,
    check_prefix,
    content_type,
    encode_json,
)

T = TypeVar("T")
COPY_CHUNK_BYTES = 1024 * 1024
MAGIC = b"\nBQOBJ1\n"
TRAILER_BYTES = 512
MAX_NAME_BYTES = 255  # a file name on every common Linux file system
OBJECT_SUFFIX = "~"
# Kept as they are in names; "%" and "~" are escaped, "/" never reaches a name.
SAFE_CHARS = "".join(c for c in string.punctuation + " " if c not in "%~/")
MKDIR_TRIES = 5  # a concurrent delete may remove an empty directory we are filling


class LocalStorage:
    """A bucket in ``root/bucket``; at most ``concurrency`` file operations at once."""

    def __init__(self, root: Path, bucket: str, *, concurrency: int = 16) -> None:
        if not bucket or "/" in bucket or bucket.startswith("."):
            raise InvalidKeyError(f"bucket name {bucket!r} cannot be a directory name")
        self.root = root
        self.bucket = bucket
        self.base = root / bucket
        self.limiter = anyio.CapacityLimiter(concurrency)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        call = functools.partial(_translate, fn, *args)
        return await anyio.to_thread.run_sync(call, limiter=self.limiter)

    async def ensure_bucket(self) -> None:
        """Create the bucket's directory (and the root) if missing."""
        await self._run(_make_dirs, self.base, None)

    async def check(self) -> None:
        """Raise StorageError unless the bucket's directory is there and writable."""

        def probe() -> None:
            if not self.base.is_dir():
                raise ObjectNotFound(f"no bucket directory {self.base}")
            if not os.access(self.base, os.W_OK | os.X_OK):
                raise StorageError(f"bucket directory {self.base} is not writable")

        await self._run(probe)

    def path_of(self, key: str) -> Path:
        """The file that holds ``key`` (InvalidKeyError if no file could)."""
        *dirs, last = check_key(key).split("/")
        return self._dir_of(dirs) / _name(last, OBJECT_SUFFIX)

    def _dir_of(self, segments: Iterable[str]) -> Path:
        path = self.base
        for segment in segments:
            path = path / _name(segment, "")
        return path

    async def put_file(self, key: str, path: Path, *, mime: str | None = None) -> None:
        """Store the file at ``path``."""

        def store() -> None:
            with path.open("rb") as fh:
                self._write(key, mime or content_type(key), _chunks_of(fh))

        await self._run(store)

    async def put_fileobj(self, key: str, fileobj: BinaryIO, *, mime: str | None = None) -> None:
        """Store an already open binary file (read in a worker thread)."""
        await self._run(self._write, key, mime or content_type(key), _chunks_of(fileobj))

    async def put_bytes(self, key: str, data: bytes, *, mime: str) -> None:
        await self._run(self._write, key, mime, [data])

    async def put_json(self, key: str, value: Any) -> None:
        await self.put_bytes(key, encode_json(value), mime="application/json")

    def _write(self, key: str, mime: str, chunks: Iterable[bytes]) -> None:
        """Write a new version of ``key`` beside it, then rename it into place."""
        target = self.path_of(key)
        md5 = hashlib.md5(usedforsecurity=False)
        fd, temp = self._open_temp(target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    md5.update(chunk)
                    out.write(chunk)
                out.write(_trailer(mime, f'"{md5.hexdigest()}"'))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(target.parent)

    def _open_temp(self, directory: Path) -> tuple[int, str]:
        """A new temporary file in ``directory``, creating the directories it needs."""
        for _ in range(MKDIR_TRIES):
            _make_dirs(directory, self.base)
            try:
                return tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
            except FileNotFoundError:  # emptied and removed by a delete meanwhile
                continue
        raise StorageError(f"could not create a file in {directory}")

    async def get_to_file(self, key: str, path: Path) -> None:
        """Copy the object to ``path`` (written beside it, then renamed into place)."""

        def copy() -> None:
            fh, _, size, _ = self._open_raw(key)
            with fh:
                fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                try:
                    with os.fdopen(fd, "wb") as out:
                        remaining = size
                        while remaining > 0:
                            chunk = _read_exactly(fh, min(COPY_CHUNK_BYTES, remaining))
                            out.write(chunk)
                            remaining -= len(chunk)
                    os.replace(temp, path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp)
                    raise

        await self._run(copy)

    async def get(self, key: str) -> tuple[bytes, str]:
        """The whole object and its Content-Type."""

        def read_all() -> tuple[bytes, str]:
            fh, meta, size, _ = self._open_raw(key)
            with fh:
                return _read_exactly(fh, size), meta["type"]

        return await self._run(read_all)

    async def read(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> Blob:
        """The object (or ``byte_range``, inclusive, end None: to the end) with its
        metadata; ObjectNotFound if missing, RangeNotSatisfiable past its end.

        At most INLINE_BYTES are read at once; a larger answer streams the rest
        (``Blob.rest``), so serving a big file costs constant memory."""

        def open_object() -> tuple[Blob, BinaryIO | None, int]:
            fh, meta, size, mtime = self._open_raw(key)
            try:
                start, end = byte_range or (0, None)
                unsatisfiable = start < 0 or start >= size or (end is not None and end < start)
                if byte_range is not None and unsatisfiable:
                    raise RangeNotSatisfiable(f"{key}: bytes {start}- of {size}")
                last = size - 1 if end is None else min(end, size - 1)
                length = max(0, last - start + 1)
                fh.seek(start)
                head = _read_exactly(fh, min(length, INLINE_BYTES))
            except BaseException:
                fh.close()
                raise
            blob = _blob(meta, size, mtime, body=head, partial=byte_range is not None)
            blob = dataclasses.replace(blob, length=length)
            if len(head) >= length:
                fh.close()
                return blob, None, 0
            return blob, fh, length - len(head)

        blob, stream, remaining = await self._run(open_object)
        if stream is None:
            return blob
        return dataclasses.replace(blob, rest=self._chunks(stream, remaining))

    async def _chunks(self, stream: BinaryIO, remaining: int) -> AsyncIterator[bytes]:
        """``remaining`` more bytes of ``stream``, STREAM_CHUNK_BYTES at a time; closed
        at the end. The file was opened before any rename, so a concurrent overwrite
        never mixes two versions."""
        try:
            while remaining > 0:
                chunk = await self._run(stream.read, min(STREAM_CHUNK_BYTES, remaining))
                if not chunk:
                    raise StorageError("object file shrank while it was read")
                remaining -= len(chunk)
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)

    async def head(self, key: str) -> Blob:
        """The object's metadata only (``body`` is empty)."""

        def stat() -> Blob:
            fh, meta, size, mtime = self._open_raw(key)
            fh.close()
            return _blob(meta, size, mtime)

        return await self._run(stat)

    async def exists(self, key: str) -> bool:
        path = self.path_of(key)
        return await self._run(path.is_file)

    def _open_raw(self, key: str) -> tuple[BinaryIO, dict[str, str], int, float]:
        """The open object file, its metadata, body size and mtime; ObjectNotFound."""
        path = self.path_of(key)
        try:
            fh: BinaryIO = path.open("rb")
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        try:
            stat = os.fstat(fh.fileno())
            size = stat.st_size - TRAILER_BYTES
            if size < 0:
                raise StorageError(f"object file {path} is truncated")
            fh.seek(size)
            meta = _parse_trailer(fh.read(TRAILER_BYTES), path)
            fh.seek(0)
        except BaseException:
            fh.close()
            raise
        return fh, meta, size, stat.st_mtime

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix``, sorted by key as S3 sorts (UTF-8 bytes).

        Only the directory the prefix's complete segments name is walked."""
        *dirs, partial = check_prefix(prefix).split("/")

        def listing() -> list[StoredObject]:
            start = self._dir_of(dirs)
            lead = "".join(segment + "/" for segment in dirs)
            found = list(_walk(start, lead, partial))
            found.sort(key=lambda obj: obj.key.encode("utf-8"))
            return found

        return await self._run(listing)

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete ``keys`` (a missing one is no error), then the directories emptied."""
        paths = [self.path_of(key) for key in keys]

        def delete() -> None:
            parents: set[Path] = set()
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    parents.add(path.parent)
            for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(parent)
                _remove_empty(parent, self.base)

        await self._run(delete)


def _name(segment: str, suffix: str) -> str:
    """A key segment as a file or directory name (see the module docstring)."""
    name = quote(segment, safe=SAFE_CHARS).replace("~", "%7E")
    if name.startswith("."):
        name = "%2E" + name[1:]
    name += suffix
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidKeyError(f"key segment {segment[:40]!r}… is too long for a file name")
    return name


def _segment(name: str) -> str:
    return unquote(name, errors="strict")


def _walk(directory: Path, lead: str, partial: str) -> Iterable[StoredObject]:
    """The objects under ``directory`` (whose keys start with ``lead``); at the top
    level only names that can start with ``partial``."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith("."):  # a write in progress (or left by a crash)
            continue
        is_object = entry.name.endswith(OBJECT_SUFFIX)
        segment = _segment(entry.name.removesuffix(OBJECT_SUFFIX) if is_object else entry.name)
        if not segment.startswith(partial):
            continue
        if is_object and entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            when = datetime.fromtimestamp(stat.st_mtime, UTC)
            yield StoredObject(lead + segment, max(0, stat.st_size - TRAILER_BYTES), when)
        elif not is_object and entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), lead + segment + "/", "")


def _trailer(mime: str, etag: str) -> bytes:
    data = json.dumps({"etag": etag, "type": mime}, separators=(",", ":")).encode()
    room = TRAILER_BYTES - len(MAGIC)
    if len(data) > room:
        raise InvalidKeyError(f"Content-Type too long to store: {mime[:40]!r}…")
    return data.ljust(room) + MAGIC


def _parse_trailer(raw: bytes, path: Path) -> dict[str, str]:
    if len(raw) != TRAILER_BYTES or not raw.endswith(MAGIC):
        raise StorageError(f"object file {path} has no valid trailer")
    try:
        meta = json.loads(raw[: -len(MAGIC)])
    except ValueError as exc:
        raise StorageError(f"object file {path} has a malformed trailer") from exc
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(field), str) for field in ("etag", "type")
    ):
        raise StorageError(f"object file {path} has a malformed trailer")
    return {"etag": meta["etag"], "type": meta["type"]}


def _blob(
    meta: dict[str, str], size: int, mtime: float, body: bytes = b"", partial: bool = False
) -> Blob:
    when = datetime.fromtimestamp(mtime, UTC)
    return Blob(
        body=body,
        content_type=meta["type"],
        etag=meta["etag"],
        size=size,
        partial=partial,
        last_modified=email.utils.format_datetime(when, usegmt=True),
    )


def _chunks_of(fh: BinaryIO) -> Iterable[bytes]:
    while chunk := fh.read(COPY_CHUNK_BYTES):
        yield chunk


def _read_exactly(fh: BinaryIO, count: int) -> bytes:
    data = fh.read(count)
    if len(data) != count:
        raise StorageError("object file shrank while it was read")
    return data


def _make_dirs(path: Path, stop: Path | None) -> None:
    """Create ``path`` and its missing parents, each made durable (its parent fsynced).
    With ``stop``, that directory must exist already (the bucket): ObjectNotFound."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        if current == stop:
            raise ObjectNotFound(f"no bucket directory {stop}")
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(directory.parent)


def _remove_empty(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents below ``stop`` while they are empty."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        _fsync_dir(directory.parent)
        directory = directory.parent


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn``; a disk fault becomes StorageError (ours pass through)."""
    try:
        return fn(*args)
    except OSError as exc:
        raise StorageError(f"local storage failed: {exc}") from exc
