"""The object store buildq uses, whatever holds it: the :class:`Storage` interface,
what it answers with, its errors and the keys it accepts.

Two backends implement it: S3 (:mod:`shared.storage.s3`, the production path) and a
local directory (:mod:`shared.storage.localdir`, one host: ``buildq up``);
:func:`shared.storage.backend.open_storage` picks one from the settings.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from shared.core.errors import StorageError, ValidationError

MAX_KEY_BYTES = 1024  # S3's limit, kept by every backend
INLINE_BYTES = 1024 * 1024  # read at once; the rest of a larger object streams
STREAM_CHUNK_BYTES = 256 * 1024
TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")


class ObjectNotFound(StorageError):
    """The object (or bucket) does not exist."""


class RangeNotSatisfiable(StorageError):
    """A byte range starts past the end of the object."""


class InvalidKeyError(ValidationError):
    """A key no backend may store: empty, too long, absolute, with a NUL or control
    character, or with an empty, ``.`` or ``..`` segment."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One entry of a listing."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class Blob:
    """An object's bytes (or a range of them) and what serving it needs."""

    body: bytes
    content_type: str
    etag: str
    size: int  # of the whole object
    partial: bool = False
    last_modified: str = ""  # an HTTP date, or "" when unknown
    length: int = -1  # bytes in this answer (the whole object or the range)
    rest: AsyncIterator[bytes] | None = None  # what follows ``body``, streamed


class Storage(Protocol):
    """One bucket, as async methods; every backend refuses the keys :func:`check_key`
    refuses, raises ObjectNotFound for a missing object and StorageError for the rest."""

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        ...

    async def check(self) -> None:
        """Raise StorageError unless the bucket is reachable."""
        ...

    async def put_file(self, key: str, path: Path, *, mime: str | None = None) -> None:
        """Store the file at ``path`` (Content-Type from the key unless ``mime``)."""
        ...

    async def put_fileobj(self, key: str, fileobj: BinaryIO, *, mime: str | None = None) -> None:
        """Store an already open binary file (read in a worker thread)."""
        ...

    async def put_bytes(self, key: str, data: bytes, *, mime: str) -> None:
        """Store ``data``."""
        ...

    async def put_json(self, key: str, value: Any) -> None:
        """Store ``value`` as compact JSON with sorted keys."""
        ...

    async def get_to_file(self, key: str, path: Path) -> None:
        """Download the object to ``path``."""
        ...

    async def get(self, key: str) -> tuple[bytes, str]:
        """The whole object and its Content-Type."""
        ...

    async def read(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> Blob:
        """The object (or ``byte_range``, inclusive, end None: to the end) with its
        metadata, the first INLINE_BYTES at once and the rest streamed; ObjectNotFound
        if missing, RangeNotSatisfiable when the range starts past its end."""
        ...

    async def head(self, key: str) -> Blob:
        """The object's metadata only (``body`` is empty)."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix`` in key order, or StorageError: never a
        partial listing."""
        ...

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete ``keys`` (a missing one is no error)."""
        ...


def content_type(name: str) -> str:
    """The Content-Type to publish ``name`` with (UTF-8 for text)."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if name.endswith(".mjs"):
        guessed = "text/javascript"
    guessed = guessed or "application/octet-stream"
    if guessed.startswith(TEXT_TYPES) and "charset" not in guessed:
        guessed += "; charset=utf-8"
    return guessed


def encode_json(value: Any) -> bytes:
    """How ``put_json`` stores a value: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def check_key(key: str) -> str:
    """``key`` if every backend can store it; InvalidKeyError otherwise."""
    if not key:
        raise InvalidKeyError("an object key must not be empty")
    check_prefix(key)
    if key.rsplit("/", 1)[-1] in ("", ".", ".."):
        raise InvalidKeyError(f"object key {key!r} ends with '/', '.' or '..'")
    return key


def check_prefix(prefix: str) -> str:
    """``prefix`` if it could begin stored keys (``""`` is every key); InvalidKeyError
    otherwise. The last segment may be partial (``blobs/ab``)."""
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key longer than {MAX_KEY_BYTES} bytes: {prefix[:40]!r}…")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in prefix):
        raise InvalidKeyError(f"object key {prefix!r} holds a NUL or control character")
    if any(0xD800 <= ord(char) <= 0xDFFF for char in prefix):
        raise InvalidKeyError(f"object key {prefix!r} is not valid UTF-8")
    if prefix.startswith("/"):
        raise InvalidKeyError(f"object key {prefix!r} is absolute")
    segments = prefix.split("/")
    if any(segment in ("", ".", "..") for segment in segments[:-1]):  # the complete ones
        raise InvalidKeyError(f"object key {prefix!r} has an empty, '.' or '..' segment")
    return prefix
