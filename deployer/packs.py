"""Packs: many small output files stored as one blob, each read back with a Range request.

A first publish of a front-end build is mostly small files (1,701 of them, 11.8 MB,
in the benchmark's tree), and object stores charge per request, in time and money:
one PUT per file is most of a publish. Packing the small files that have to be
uploaded into a few blobs of about PACK_TARGET_BYTES turns ~1,700 PUTs into ~3.

A pack is the files' bytes back to back, stored content-addressed like any blob
(``blobs/<sha256 of the pack>``); the manifest records, for each file, its own
content hash (its ETag and what later publishes deduplicate on), its pack and its
offset (:class:`shared.storage.manifest.FileRef`). Serving reads the file's span of
the pack with one ranged GET, as it reads a blob with one plain GET.

Uploads of at least PACK_MIN_FILES small files are packed: a redeploy that
changes a file or two uploads them as blobs of their own, so a pack is not kept
alive by one file of an otherwise dead deployment more often than it must. Fewer
files are packed only when there are at least two and together they hold at most
TINY_PACK_BYTES (a tiny site's first publish, say): a pack that small wastes next to
nothing when one of its files outlives the others, and it saves a PUT per file.
Files over PACK_FILE_MAX_BYTES (streamed, and rarely many) and empty files (nothing
to read) are never packed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.storage.archive import Entry, open_entry

PACK_FILE_MAX_BYTES = 1024 * 1024  # larger files are blobs of their own
PACK_TARGET_BYTES = 4 * 1024 * 1024  # a pack is closed once it holds this much
PACK_MIN_FILES = 8  # fewer small files to upload: one blob each, unless tiny
TINY_PACK_BYTES = 64 * 1024  # fewer files (two or more) this small still share a pack


@dataclass(frozen=True, slots=True)
class Member:
    """One file to pack: its content hash and its listing entry."""

    digest: str
    entry: Entry


@dataclass(frozen=True, slots=True)
class Pack:
    """A built pack: its bytes, their hash, and where each content starts."""

    data: bytes
    sha256: str
    offsets: dict[str, int]  # content hash -> offset in ``data``


def packable(entry: Entry) -> bool:
    """Whether a file may go into a pack (small, and not empty)."""
    return 0 < entry.size <= PACK_FILE_MAX_BYTES


def plan_packs(members: Sequence[Member]) -> list[list[Member]]:
    """``members`` in packs of about PACK_TARGET_BYTES each, in listing order (files of
    one directory, likely served together, stay together); none if there are fewer
    than PACK_MIN_FILES of them, unless two or more hold TINY_PACK_BYTES at most."""
    if len(members) < PACK_MIN_FILES and (
        len(members) < 2 or sum(m.entry.size for m in members) > TINY_PACK_BYTES
    ):
        return []
    packs: list[list[Member]] = []
    current: list[Member] = []
    size = 0
    for member in members:
        current.append(member)
        size += member.entry.size
        if size >= PACK_TARGET_BYTES:
            packs.append(current)
            current, size = [], 0
    if current:
        packs.append(current)
    return packs


def build_pack(
    root_fd: int, members: Sequence[Member], changed: Callable[[Entry], Exception]
) -> Pack:
    """Read ``members`` beneath ``root_fd`` into one pack (blocking: run it in a worker
    thread). A file whose bytes are not the ones hashed raises ``changed(entry)``."""
    parts: list[bytes] = []
    offsets: dict[str, int] = {}
    offset = 0
    for member in members:
        entry = member.entry
        with os.fdopen(open_entry(root_fd, entry), "rb") as fh:
            data = fh.read(entry.size + 1)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != member.digest:
            raise changed(entry)
        parts.append(data)
        offsets[member.digest] = offset
        offset += len(data)
    joined = b"".join(parts)
    return Pack(joined, hashlib.sha256(joined).hexdigest(), offsets)
