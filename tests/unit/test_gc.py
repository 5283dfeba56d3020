"""shared/storage/gc.py: blobs no kept deployment references are deleted past their
grace period; nothing is deleted when a listing or a manifest cannot be read whole."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.core.errors import StorageError
from shared.core.settings import Settings
from shared.storage.gc import CollectionError, collect
from shared.storage.manifest import FileRef, Manifest, blob_key, manifest_key
from shared.storage.s3 import S3Storage, Storage, StoredObject, make_s3_client

pytestmark = pytest.mark.anyio

GRACE_S = 3600.0


class AgedStorage(S3Storage):
    """Storage whose listings call every object old, except those marked young."""

    young: set[str]

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        old = datetime.fromtimestamp(time.time() - 10 * GRACE_S, UTC)
        new = datetime.fromtimestamp(time.time(), UTC)
        return [
            replace(o, last_modified=new if o.key in self.young else old)
            for o in await super().list_objects(prefix)
        ]


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture
async def storage(aws: None, settings: Settings) -> AgedStorage:
    storage = AgedStorage(make_s3_client(settings), "unit-gc", concurrency=4)
    storage.young = set()
    await storage.ensure_bucket()
    return storage


async def deployment(
    storage: Storage, job_id: str, service: str, seq: int, blobs: list[str], *, parent: str | None
) -> None:
    for name in blobs:
        await storage.put_bytes(blob_key(sha(name)), name.encode(), mime="text/plain")
    files = {name: FileRef(sha(name), len(name), "text/plain") for name in blobs}
    manifest = Manifest(service, seq, parent, False, files)
    await storage.put_bytes(manifest_key(job_id), manifest.encode(), mime="application/json")


async def keys(storage: Storage) -> set[str]:
    return {o.key for o in await storage.list_objects("")}


@pytest.fixture
async def history(storage: AgedStorage) -> AgedStorage:
    """web: w0 <- w1 <- w2 <- w3 (live); api: a1 (live), a2 (newer, never live);
    w-young: a deployment still publishing; orphan blobs, one old and one new."""
    await deployment(storage, "w0", "web", 0, ["shared", "only-w0"], parent=None)
    await deployment(storage, "w1", "web", 1, ["shared", "only-w1"], parent="w0")
    await deployment(storage, "w2", "web", 2, ["shared", "only-w2"], parent="w1")
    await deployment(storage, "w3", "web", 3, ["shared", "only-w3"], parent="w2")
    await deployment(storage, "a1", "api", 1, ["only-a1"], parent=None)
    await deployment(storage, "a2", "api", 2, ["only-a2"], parent="a1")
    await deployment(storage, "wy", "web", 4, ["only-wy"], parent="w3")
    await storage.put_bytes(blob_key(sha("orphan-old")), b"x", mime="text/plain")
    await storage.put_bytes(blob_key(sha("orphan-new")), b"x", mime="text/plain")
    await storage.put_bytes("blobs/not-a-hash", b"x", mime="text/plain")
    storage.young = {manifest_key("wy"), blob_key(sha("only-wy")), blob_key(sha("orphan-new"))}
    return storage


async def live() -> list[str]:
    return ["w3", "a1"]


async def test_only_unreferenced_blobs_past_their_grace_are_deleted(history: AgedStorage) -> None:
    before = await keys(history)

    result = await collect(history, live, grace_s=GRACE_S, keep_recent=1)

    gone = {manifest_key("w0"), blob_key(sha("only-w0")), blob_key(sha("orphan-old"))}
    assert before - await keys(history) == gone
    # kept: the live chain (w3, w2, w1), the newest of each service (wy, a2), the
    # live a1, and the young manifest wy; blobs: theirs, the young orphan, foreign keys
    assert result.kept_manifests == {"w3", "w2", "w1", "wy", "a1", "a2"}
    assert result.deleted_manifests == ["w0"]
    assert sorted(result.deleted_blobs) == sorted(
        [blob_key(sha("only-w0")), blob_key(sha("orphan-old"))]
    )
    assert result.young_blobs == 1


async def test_more_recent_deployments_can_be_kept(history: AgedStorage) -> None:
    result = await collect(history, live, grace_s=GRACE_S, keep_recent=10)

    assert result.deleted_manifests == []
    assert result.deleted_blobs == [blob_key(sha("orphan-old"))]


async def test_a_dry_run_deletes_nothing(history: AgedStorage) -> None:
    before = await keys(history)

    result = await collect(history, live, grace_s=GRACE_S, keep_recent=1, dry_run=True)

    assert await keys(history) == before
    assert result.deleted_manifests == ["w0"]
    assert len(result.deleted_blobs) == 2


@pytest.mark.parametrize("prefix", ["manifests/", "blobs/"])
async def test_a_listing_that_fails_part_way_deletes_nothing(
    history: AgedStorage, prefix: str
) -> None:
    real = history.client.list_objects_v2
    calls = 0

    def paged_then_broken(**kwargs: Any) -> Any:
        nonlocal calls
        if kwargs["Prefix"] != prefix:
            return real(**kwargs)
        calls += 1
        if calls > 1:
            raise ClientError({"Error": {"Code": "InternalError"}}, "ListObjectsV2")
        return real(**kwargs, MaxKeys=1)  # one object per page: the second page fails

    history.client.list_objects_v2 = paged_then_broken  # type: ignore[method-assign]
    before = await keys(history)

    with pytest.raises(StorageError):
        await collect(history, live, grace_s=GRACE_S, keep_recent=1)

    history.client.list_objects_v2 = real  # type: ignore[method-assign]
    assert await keys(history) == before


async def test_a_listing_cut_short_without_a_way_on_deletes_nothing(
    history: AgedStorage,
) -> None:
    real = history.client.list_objects_v2

    def truncated(**kwargs: Any) -> Any:
        page = real(**kwargs)
        if kwargs["Prefix"] == "blobs/":
            page = {**page, "IsTruncated": True}
            page.pop("NextContinuationToken", None)
        return page

    history.client.list_objects_v2 = truncated  # type: ignore[method-assign]
    before = await keys(history)

    with pytest.raises(StorageError, match="cut short"):
        await collect(history, live, grace_s=GRACE_S, keep_recent=1)

    history.client.list_objects_v2 = real  # type: ignore[method-assign]
    assert await keys(history) == before


async def test_an_unreadable_manifest_stops_the_collection(history: AgedStorage) -> None:
    await history.put_bytes(manifest_key("bad"), b'{"version": 1}', mime="application/json")
    before = await keys(history)

    with pytest.raises(CollectionError, match=r"manifests/bad\.json"):
        await collect(history, live, grace_s=GRACE_S, keep_recent=1)

    assert await keys(history) == before


async def test_live_deployments_are_read_after_the_manifests_are_listed(
    history: AgedStorage,
) -> None:
    """A manifest written after the listing is found through the live alias."""

    async def promoted_meanwhile() -> list[str]:
        await deployment(history, "w5", "web", 5, ["shared", "only-w5"], parent="w3")
        return ["w5", "a1"]

    result = await collect(history, promoted_meanwhile, grace_s=GRACE_S, keep_recent=1)

    assert {"w5", "w3", "wy"} <= result.kept_manifests
    assert blob_key(sha("only-w5")) not in result.deleted_blobs
    assert blob_key(sha("only-w3")) not in result.deleted_blobs


async def test_bad_arguments_are_refused(history: AgedStorage) -> None:
    with pytest.raises(ValueError, match="keep_recent"):
        await collect(history, live, grace_s=GRACE_S, keep_recent=0)


async def packed(storage: Storage, job_id: str, seq: int, pack: bytes, names: list[str]) -> str:
    """A deployment of ``names``, all read from the one pack blob ``pack``."""
    pack_hash = hashlib.sha256(pack).hexdigest()
    await storage.put_bytes(blob_key(pack_hash), pack, mime="application/octet-stream")
    files = {
        name: FileRef(sha(name), 1, "text/plain", pack=pack_hash, offset=i)
        for i, name in enumerate(names)
    }
    manifest = Manifest("site", seq, None, False, files)
    await storage.put_bytes(manifest_key(job_id), manifest.encode(), mime="application/json")
    return pack_hash


async def test_a_pack_stays_while_a_kept_deployment_reads_one_of_its_files(
    storage: AgedStorage,
) -> None:
    shared = await packed(storage, "p1", 1, b"abc", ["a", "b", "c"])
    alone = await packed(storage, "p0", 0, b"xyz", ["x", "y", "z"])
    # p2 reads one file of p1's pack and nothing of p0's
    await storage.put_bytes(
        manifest_key("p2"),
        Manifest(
            "site", 2, None, False, {"b": FileRef(sha("b"), 1, "text/plain", shared, 1)}
        ).encode(),
        mime="application/json",
    )

    async def only_p2() -> list[str]:
        return ["p2"]

    result = await collect(storage, only_p2, grace_s=GRACE_S, keep_recent=1)

    assert result.kept_manifests == {"p2"}
    assert result.deleted_manifests == ["p0", "p1"]
    assert result.deleted_blobs == [blob_key(alone)]
    assert blob_key(shared) in await keys(storage)
