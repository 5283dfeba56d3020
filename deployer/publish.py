"""Publish a build's output as content-addressed blobs plus a per-deployment manifest.

Each file is hashed (SHA-256) while it is read, and stored once per content at
``blobs/<sha256>``; the deployment is ``manifests/<id>.json`` (path -> hash, size,
Content-Type; :mod:`shared.storage.manifest`), written last, after every blob it
names is stored. An unchanged redeploy uploads nothing but its manifest; a
one-file change uploads one blob.

Which contents are stored, without a HEAD per file: those named by the service's live
manifest and its ancestors (``REUSE_DEPTH`` manifests, the ``parent`` chain, each
older one read only for contents the newer ones do not name). A
manifest is only ever written after its blobs, and garbage collection
(:mod:`shared.storage.gc`) keeps every blob of a live deployment's chain, of a
manifest younger than its grace period, and every blob younger than it: so a blob
trusted this way cannot be deleted while this publish runs (the service's deploy
lock keeps its live alias still meanwhile). Anything not known that way is PUT
(a PUT of an existing blob rewrites the same bytes, harmlessly). If the knowledge
is wrong anyway — someone deleted blobs by hand, or ran ``buildq gc`` with a grace
period shorter than a publish — the site's sites origin answers 503 for the
missing file, and later publishes that still trust the blob do not upload it
again; ``buildq gc`` refuses grace periods under an hour for that reason.

A file extracted from the source and left untouched by the build is not read again:
its digest, taken at extraction, still holds (:mod:`shared.storage.digests`). Files
are listed by :func:`shared.storage.archive.walk_tree`, then each other one is opened
beneath a directory fd with ``O_NOFOLLOW`` and checked
(:func:`shared.storage.archive.open_entry`) before it is read: a file swapped for a
symlink after the listing is refused, never followed to a host file. A file whose
bytes no longer match the hash taken on the first read is refused the same way.

Transfer: when many small files have to be uploaded, they go in packs of a few MB
(:mod:`deployer.packs`: one PUT per pack instead of one per file; the manifest
records each file's pack and offset). Otherwise a small file is read into memory
and sent with one ``PutObject`` of bytes (no transfer manager, no
``Expect: 100-continue`` round trip); a file over INLINE_UPLOAD_BYTES streams
through the transfer manager, hashed as it goes.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import anyio
import anyio.to_thread
import structlog

from deployer.packs import Member, build_pack, packable, plan_packs
from shared.core.errors import ValidationError
from shared.storage.archive import Entry, open_entry, open_root, walk_tree
from shared.storage.digests import Digests
from shared.storage.manifest import (
    REUSE_DEPTH,
    FileRef,
    Loaded,
    Manifest,
    ManifestCache,
    ManifestError,
    Stored,
    blob_key,
    manifest_key,
)
from shared.storage.s3 import Storage, content_type

INLINE_UPLOAD_BYTES = 1024 * 1024  # read whole and PUT as bytes; larger files stream
HASH_BATCH = 128  # files hashed per worker-thread call
HASH_THREADS = 4  # hashlib and file reads release the GIL
PACK_UPLOADS = 4  # packs built and sent at once: bounds the memory they take
PACK_MIME = "application/octet-stream"

log = structlog.get_logger("deployer")


@dataclass(frozen=True, slots=True)
class Target:
    """The deployment being published."""

    job_id: str
    service: str
    seq: int
    spa: bool


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish stored: every file, and how many blobs it had to upload."""

    files: int
    bytes: int
    uploaded: int
    uploaded_bytes: int
    packs: int = 0  # blobs holding several of the uploaded files

    def summary(self) -> str:
        """``1758 files (17.2 MB): 3 uploaded, 1755 already stored`` (``… uploaded in
        2 packs, …`` when packed)."""
        packed = f" in {self.packs} pack{'s' if self.packs != 1 else ''}" if self.packs else ""
        return (
            f"{self.files} files ({human_bytes(self.bytes)}): {self.uploaded} uploaded{packed}, "
            f"{self.files - self.uploaded} already stored"
        )


def human_bytes(size: int) -> str:
    """``17.2 MB`` (decimal units, as S3 consoles and ``du --si`` print them)."""
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@dataclass
class Known:
    """Where contents are already stored, as the service's live manifest and its
    ancestors say. The newest placement of a content wins, and an older manifest is
    read only for contents the newer ones do not name: an unchanged or nearly
    unchanged redeploy reads one manifest, not REUSE_DEPTH."""

    stored: dict[str, Stored] = field(default_factory=dict)
    manifests: ManifestCache | None = None
    older: str | None = None  # the next manifest up the chain
    left: int = 0  # manifests that may still be read
    seen: set[str] = field(default_factory=set)

    async def where(self, digests: Collection[str]) -> dict[str, Stored]:
        """Where each of ``digests`` the chain names is stored."""
        wanted = {d for d in digests if d not in self.stored}
        while wanted and self.older is not None and self.left > 0 and self.manifests:
            job_id, self.older, self.left = self.older, None, self.left - 1
            if job_id in self.seen:
                break
            self.seen.add(job_id)
            try:
                loaded = await self.manifests.get(job_id)
            except ManifestError as exc:  # what the newer manifests said still holds
                log.warning("publish.ancestor_manifest_unreadable", id=job_id, error=str(exc))
                break
            if loaded is None:
                break
            for digest, where in loaded.manifest.stored().items():
                if digest in wanted:
                    self.stored[digest] = where
                    wanted.discard(digest)
            self.older = loaded.manifest.parent
        return {d: self.stored[d] for d in digests if d in self.stored}


async def known_blobs(manifests: ManifestCache, live_id: str | None) -> tuple[str | None, Known]:
    """The live deployment (the new manifest's ``parent``) and what its manifest chain
    knows is stored (:class:`Known`): what this publish may skip. An unreadable live
    manifest is no knowledge: everything is uploaded (and this deploy heals it)."""
    if live_id is None:
        return None, Known()
    try:
        loaded = await manifests.get(live_id)
    except ManifestError as exc:
        log.warning("publish.base_manifest_unreadable", live_id=live_id, error=str(exc))
        return None, Known()
    if loaded is None:
        return None, Known()
    manifest = loaded.manifest
    return live_id, Known(manifest.stored(), manifests, manifest.parent, REUSE_DEPTH - 1, {live_id})


async def publish_site(
    storage: Storage,
    root: Path,
    target: Target,
    *,
    known: Known | Mapping[str, Stored] | None = None,
    parent: str | None = None,
    max_files: int,
    max_bytes: int,
    concurrency: int,
    on_skip: Callable[[str, str], None] | None = None,
    manifests: ManifestCache | None = None,
    digests: Digests | None = None,
) -> Published:
    """Store every regular file under ``root`` as a blob or in a pack (skipping
    ``known`` contents, reused where they are stored) and then the deployment's
    manifest. A file ``digests`` still vouches for is not read to be hashed."""

    def listed() -> tuple[int, list[Entry]]:
        """The root, opened, and its listing: one worker-thread call for both."""
        fd = open_root(root)
        try:
            return fd, list(
                walk_tree(root, max_files=max_files, max_bytes=max_bytes, on_skip=on_skip)
            )
        except BaseException:
            os.close(fd)
            raise

    root_fd, entries = await anyio.to_thread.run_sync(listed)
    try:
        hashes = await _hash_all(root_fd, entries, digests or Digests())
        if not isinstance(known, Known):
            known = Known(dict(known or {}))
        stored = await known.where(set(hashes))
        missing: dict[str, Entry] = {}
        for entry, digest in zip(entries, hashes, strict=True):
            if digest not in stored:
                missing.setdefault(digest, entry)
        stored |= await _upload_all(storage, root_fd, missing, concurrency)
    finally:
        os.close(root_fd)
    files: dict[str, FileRef] = {}
    for entry, digest in zip(entries, hashes, strict=True):
        where = stored[digest]
        files[entry.rel] = FileRef(
            digest, entry.size, content_type(entry.rel), where.pack, where.offset
        )
    manifest = Manifest(
        service=target.service, seq=target.seq, parent=parent, spa=target.spa, files=files
    )
    await storage.put_bytes(manifest_key(target.job_id), manifest.encode(), mime="application/json")
    if manifests is not None:  # the next publish of this service starts from it
        manifests.put(target.job_id, Loaded(manifest, ""))
    return Published(
        files=len(entries),
        bytes=sum(e.size for e in entries),
        uploaded=len(missing),
        uploaded_bytes=sum(e.size for e in missing.values()),
        packs=len({where.pack for digest, where in stored.items() if digest in missing} - {None}),
    )


async def _hash_all(root_fd: int, entries: list[Entry], digests: Digests) -> list[str]:
    """The SHA-256 of every entry, in order: trusted from ``digests``, or read in
    batches on a few threads."""
    hashes = [digests.trusted(entry.stamp) or "" for entry in entries]
    unread = [index for index, digest in enumerate(hashes) if not digest]
    limiter = anyio.CapacityLimiter(HASH_THREADS)

    def hash_batch(start: int) -> None:
        for index in unread[start : start + HASH_BATCH]:
            entry = entries[index]
            with os.fdopen(open_entry(root_fd, entry), "rb", buffering=0) as fh:
                if entry.size <= INLINE_UPLOAD_BYTES:  # one read; file_digest's 256 KiB
                    digest = hashlib.sha256(fh.readall())  # buffer per file costs more
                else:
                    digest = hashlib.file_digest(fh, "sha256")
            hashes[index] = digest.hexdigest()

    if len(unread) <= HASH_BATCH:  # one batch at most (a small site): no task group
        if unread:
            await anyio.to_thread.run_sync(hash_batch, 0)
        return hashes

    async def run(start: int) -> None:
        await anyio.to_thread.run_sync(hash_batch, start, limiter=limiter)

    await _gather([functools.partial(run, s) for s in range(0, len(unread), HASH_BATCH)])
    return hashes


async def _upload_all(
    storage: Storage, root_fd: int, missing: dict[str, Entry], concurrency: int
) -> dict[str, Stored]:
    """Upload every missing content: packed if there are many small ones, otherwise
    one blob each; where each one is now stored."""
    small = [Member(d, e) for d, e in missing.items() if packable(e)]
    packs = plan_packs(small)
    placed: dict[str, Stored] = {}
    if packs:
        missing = {d: e for d, e in missing.items() if not packable(e)}
    singles = iter(missing.items())
    pending_packs = iter(packs)

    async def uploader() -> None:
        for digest, entry in singles:
            await _upload(storage, root_fd, digest, entry)
            placed[digest] = Stored()

    async def packer() -> None:
        for members in pending_packs:
            placed.update(await _upload_pack(storage, root_fd, members))

    calls: list[Callable[[], Coroutine[Any, Any, None]]]
    calls = [uploader] * (min(concurrency, len(missing)) or 1)
    calls += [packer] * min(PACK_UPLOADS, concurrency, len(packs))
    await _gather(calls)
    return placed


def _changed(entry: Entry) -> ValidationError:
    return ValidationError(f"output file {entry.rel!r} changed while it was published")


async def _upload_pack(storage: Storage, root_fd: int, members: list[Member]) -> dict[str, Stored]:
    """One pack, built from its files (each checked against its hash) and stored."""
    pack = await anyio.to_thread.run_sync(build_pack, root_fd, members, _changed)
    await storage.put_bytes(blob_key(pack.sha256), pack.data, mime=PACK_MIME)
    return {digest: Stored(pack.sha256, offset) for digest, offset in pack.offsets.items()}


async def _upload(storage: Storage, root_fd: int, digest: str, entry: Entry) -> None:
    """One blob from its file, refused if its bytes are not the ones hashed."""
    mime = content_type(entry.rel)
    if entry.size <= INLINE_UPLOAD_BYTES:

        def read() -> bytes:
            with os.fdopen(open_entry(root_fd, entry), "rb") as fh:
                data = fh.read(entry.size + 1)
            if len(data) != entry.size or hashlib.sha256(data).hexdigest() != digest:
                raise _changed(entry)
            return data

        data = await anyio.to_thread.run_sync(read)
        await storage.put_bytes(blob_key(digest), data, mime=mime)
        return
    fd = await anyio.to_thread.run_sync(open_entry, root_fd, entry)
    with os.fdopen(fd, "rb") as fh:
        reader = HashingReader(fh)
        await storage.put_fileobj(blob_key(digest), cast(BinaryIO, reader), mime=mime)
    if reader.digest.hexdigest() != digest or reader.read_bytes != entry.size:
        await storage.delete_keys([blob_key(digest)])  # not the content its name says
        raise _changed(entry)


class HashingReader:
    """A read-only, non-seekable view of a file that hashes what passes through."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        self.read_bytes += len(data)
        return data


async def _gather(calls: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run ``calls`` together; in an outage they fail together: raise the first."""
    try:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(call)
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
