"""Garbage collection of published blobs: delete what no kept deployment references.

Kept deployments are what the platform can still serve or roll back to:

- every service's live deployment, with its manifest's ``parent`` chain
  (``REUSE_DEPTH`` manifests: exactly what a publish of that service trusts to
  exist, :mod:`deployer.publish`);
- the ``keep_recent`` newest manifests (by submission seq) of every service: what
  ``POST /services/{name}/rollback`` can go back to (``BUILDQ_KEEP_DEPLOYMENTS``,
  default DEFAULT_KEEP_RECENT, which ``buildq gc`` passes);
- every manifest younger than the grace period (a deployment still publishing or
  promoting, or kept a while for its preview).

Manifests of other deployments are deleted (their previews stop being served),
then every ``blobs/<sha256>`` that no kept manifest names and that is older than the
grace period. A pack (many small files in one blob) is named by every manifest
with a file in it, so it stays while any kept deployment reads one of its files.

The race this guards against: a publish reads the live manifest chain, skips the
blobs it names, uploads the rest and writes its manifest last, while GC lists and
deletes. GC lists the manifests first, then reads the live aliases, then lists the
blobs. A new manifest it did not list was written after its listing, so its
publish started from a live deployment that is still live when GC reads the
aliases (the deploy lock keeps a service's alias still while it publishes) or is
the new manifest itself, now live and read by key: either way the reused blobs
are kept. Blobs the publish uploaded are younger than the grace period. So the
grace period must exceed the longest publish plus one GC run; the default (a
day) does by far, and the CLI refuses less than an hour.

Nothing is deleted unless every listing and every kept manifest was read whole:
a failed or cut-short listing, or an unreadable manifest, raises before the
first delete.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio

from shared.core.errors import StorageError
from shared.storage.manifest import (
    BLOB_PREFIX,
    MANIFEST_PREFIX,
    REUSE_DEPTH,
    Manifest,
    ManifestError,
    blob_hash,
    manifest_id,
    manifest_key,
)
from shared.storage.s3 import ObjectNotFound, Storage, StoredObject

DEFAULT_GRACE_S = 24 * 3600
DEFAULT_KEEP_RECENT = 10  # BUILDQ_KEEP_DEPLOYMENTS's default (tests/unit/test_rollback.py checks)
READ_CONCURRENCY = 16


class CollectionError(StorageError):
    """Garbage collection stopped before deleting anything it could not be sure of."""


@dataclass
class Collection:
    """What one garbage collection found, and deleted (or would, on a dry run)."""

    kept_manifests: set[str] = field(default_factory=set)
    deleted_manifests: list[str] = field(default_factory=list)
    deleted_blobs: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept_blobs: int = 0
    young_blobs: int = 0  # unreferenced, but within the grace period
    dry_run: bool = False


async def collect(
    storage: Storage,
    live_ids: Callable[[], Awaitable[Iterable[str]]],
    *,
    grace_s: float = DEFAULT_GRACE_S,
    keep_recent: int = DEFAULT_KEEP_RECENT,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> Collection:
    """Delete unreferenced manifests and blobs past ``grace_s`` (see the module doc).

    ``live_ids`` is called after the manifests are listed and before the blobs are."""
    if grace_s < 0 or keep_recent < 1:
        raise ValueError("grace_s must be >= 0 and keep_recent >= 1")
    cutoff = datetime.fromtimestamp(clock() - grace_s, UTC)
    listed = {
        job_id: obj
        for obj in await storage.list_objects(MANIFEST_PREFIX)
        if (job_id := manifest_id(obj.key)) is not None
    }
    live = set(await live_ids())
    manifests = await _read_all(storage, set(listed) | live)
    kept = _kept(manifests, listed, live, cutoff, keep_recent)
    referenced: set[str] = set()
    for job_id in kept:
        referenced |= manifests[job_id].blobs()  # packs included
    result = Collection(kept_manifests=kept, dry_run=dry_run)
    result.deleted_manifests = sorted(
        job_id
        for job_id, obj in listed.items()
        if job_id not in kept and obj.last_modified < cutoff
    )
    doomed: list[StoredObject] = []
    for obj in await storage.list_objects(BLOB_PREFIX):
        digest = blob_hash(obj.key)
        if digest is None:
            continue  # not a blob we wrote: leave it alone
        if digest in referenced:
            result.kept_blobs += 1
        elif obj.last_modified >= cutoff:
            result.young_blobs += 1
        else:
            doomed.append(obj)
    result.deleted_blobs = [obj.key for obj in doomed]
    result.deleted_bytes = sum(obj.size for obj in doomed)
    if not dry_run:
        # Manifests first: a run cut short leaves orphan blobs (collected next
        # time), never a manifest that names a deleted blob.
        await storage.delete_keys([manifest_key(job_id) for job_id in result.deleted_manifests])
        await storage.delete_keys(result.deleted_blobs)
    return result


def _kept(
    manifests: dict[str, Manifest],
    listed: dict[str, StoredObject],
    live: set[str],
    cutoff: datetime,
    keep_recent: int,
) -> set[str]:
    """The ids of the kept deployments that have a manifest."""
    kept: set[str] = set()
    for job_id in live:
        chain_id: str | None = job_id
        for _ in range(REUSE_DEPTH):
            if chain_id is None or chain_id not in manifests:
                break
            kept.add(chain_id)
            chain_id = manifests[chain_id].parent
    by_service: defaultdict[str, list[tuple[int, str]]] = defaultdict(list)
    for job_id, manifest in manifests.items():
        by_service[manifest.service].append((manifest.seq, job_id))
        obj = listed.get(job_id)
        if obj is not None and obj.last_modified >= cutoff:
            kept.add(job_id)
    for entries in by_service.values():
        kept.update(job_id for _, job_id in sorted(entries, reverse=True)[:keep_recent])
    return kept


async def _read_all(storage: Storage, job_ids: set[str]) -> dict[str, Manifest]:
    """Every listed or live manifest, decoded; a live id without one (published
    before manifests) is left out. Any other failure stops the collection."""
    found: dict[str, Manifest] = {}
    pending = iter(sorted(job_ids))

    async def reader() -> None:
        for job_id in pending:
            try:
                data, _ = await storage.get(manifest_key(job_id))
            except ObjectNotFound:
                continue
            try:
                found[job_id] = Manifest.decode(data)
            except ManifestError as exc:
                raise CollectionError(
                    f"{manifest_key(job_id)} is unreadable ({exc}); nothing was deleted: "
                    "fix or remove it, then run again"
                ) from exc

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(min(READ_CONCURRENCY, len(job_ids)) or 1):
                tg.start_soon(reader)
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
    return found
