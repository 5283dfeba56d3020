"""shared/storage/manifest.py: the manifest format, its refusal of hostile content,
and the bounded manifest cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.core.settings import Settings
from shared.storage.manifest import (
    MANIFEST_VERSION,
    PACKED_VERSION,
    FileRef,
    Loaded,
    Manifest,
    ManifestCache,
    ManifestError,
    Stored,
    blob_hash,
    blob_key,
    manifest_id,
    manifest_key,
)
from shared.storage.s3 import S3Storage, Storage, make_s3_client

HASH = "a" * 64


def manifest(files: dict[str, FileRef] | None = None, **fields: Any) -> Manifest:
    base: dict[str, Any] = {"service": "web", "seq": 3, "parent": None, "spa": False}
    base.update(fields)
    return Manifest(files=files or {"index.html": FileRef(HASH, 5, "text/html")}, **base)


def document(**changes: Any) -> bytes:
    doc = json.loads(manifest().encode())
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_manifest_round_trips_through_its_json() -> None:
    original = manifest(
        {
            "index.html": FileRef(HASH, 11, "text/html; charset=utf-8"),
            "a/b c.js": FileRef("0" * 64, 0, "text/javascript; charset=utf-8"),
        },
        parent="abc123",
        spa=True,
    )

    assert Manifest.decode(original.encode()) == original
    assert original.encode() == original.encode()  # deterministic: a re-run writes the same
    assert original.hashes() == {HASH, "0" * 64}


@pytest.mark.parametrize(
    "files",
    [
        {"../etc/passwd": {"sha256": HASH, "size": 1, "type": "text/plain"}},
        {"/abs": {"sha256": HASH, "size": 1, "type": "text/plain"}},
        {"a//b": {"sha256": HASH, "size": 1, "type": "text/plain"}},
        {"a\\b": {"sha256": HASH, "size": 1, "type": "text/plain"}},
        {"a\nb": {"sha256": HASH, "size": 1, "type": "text/plain"}},
        {"x": {"sha256": "A" * 64, "size": 1, "type": "text/plain"}},
        {"x": {"sha256": "../../sources/x", "size": 1, "type": "text/plain"}},
        {"x": {"sha256": HASH[:-1], "size": 1, "type": "text/plain"}},
        {"x": {"sha256": HASH, "size": -1, "type": "text/plain"}},
        {"x": {"sha256": HASH, "size": True, "type": "text/plain"}},
        {"x": {"sha256": HASH, "size": "1", "type": "text/plain"}},
        {"x": {"sha256": HASH, "size": 1, "type": "text/html\r\nSet-Cookie: a=b"}},
        {"x": {"sha256": HASH, "size": 1, "type": "nonsense"}},
        {"x": {"sha256": HASH, "size": 1}},
        {"x": "not an object"},
    ],
)
def test_hostile_file_entries_refuse_the_whole_manifest(files: dict[str, Any]) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(document(files=files))


PACK = "b" * 64


def test_packed_entries_round_trip_as_version_2_and_plain_ones_stay_version_1() -> None:
    packed = manifest(
        {
            "index.html": FileRef(HASH, 11, "text/html", pack=PACK, offset=0),
            "app.js": FileRef("c" * 64, 3, "text/javascript", pack=PACK, offset=11),
            "big.bin": FileRef("d" * 64, 9, "application/octet-stream"),
        }
    )
    plain = manifest()

    assert json.loads(packed.encode())["version"] == PACKED_VERSION
    assert json.loads(plain.encode())["version"] == MANIFEST_VERSION
    assert "pack" not in plain.encode().decode()
    assert Manifest.decode(packed.encode()) == packed
    assert packed.hashes() == {HASH, "c" * 64, "d" * 64}
    assert packed.blobs() == {PACK, "d" * 64}  # what GC keeps: the pack, not its files
    assert packed.stored()["c" * 64] == Stored(PACK, 11)
    assert packed.stored()["d" * 64] == Stored()
    assert packed.files["app.js"].blob == PACK


def packed_document(entry: dict[str, Any], version: int = PACKED_VERSION) -> bytes:
    base = {"sha256": HASH, "size": 4, "type": "text/plain"}
    return document(version=version, files={"x": {**base, **entry}})


@pytest.mark.parametrize(
    "data",
    [
        packed_document({"pack": PACK, "offset": 0}, version=MANIFEST_VERSION),
        packed_document({"offset": 3}),
        packed_document({"pack": "../blobs/x", "offset": 0}),
        packed_document({"pack": PACK.upper(), "offset": 0}),
        packed_document({"pack": PACK, "offset": -1}),
        packed_document({"pack": PACK, "offset": "7"}),
        packed_document({"pack": PACK, "offset": False}),
        packed_document({"pack": PACK, "offset": 0, "size": 0}),
    ],
)
def test_bad_pack_entries_refuse_the_whole_manifest(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b"\xff\xfe",
        document(version=3),
        document(version=None),
        document(version=True),
        document(service="Bad Name"),
        document(seq=-1),
        document(seq=1.5),
        document(parent="../x"),
        document(spa="yes"),
        document(files=[]),
    ],
)
def test_malformed_manifests_are_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(data)


def test_keys_parse_back_only_when_they_are_ours() -> None:
    assert blob_hash(blob_key(HASH)) == HASH
    assert blob_hash("blobs/" + "A" * 64) is None
    assert blob_hash("sites/x/" + HASH) is None
    assert manifest_id(manifest_key("abc123")) == "abc123"
    assert manifest_id("manifests/a/b.json") is None
    assert manifest_id("manifests/x.txt") is None


@pytest.fixture
async def storage(aws: None, settings: Settings) -> Storage:
    storage = S3Storage(make_s3_client(settings), "unit-manifests", concurrency=4)
    await storage.ensure_bucket()
    return storage


@pytest.mark.anyio
async def test_the_cache_reads_once_and_follows_the_parent_chain(storage: Storage) -> None:
    for job_id, parent in (("a", None), ("b", "a"), ("c", "b"), ("d", "c")):
        data = manifest(parent=parent).encode()
        await storage.put_bytes(manifest_key(job_id), data, mime="application/json")
    cache = ManifestCache(storage)

    chain = await cache.chain("d")
    await storage.delete_keys([manifest_key("d")])

    assert [m.parent for m in chain] == ["c", "b", "a"]  # three manifests at most
    assert await cache.get("d") is not None  # cached: immutable once written
    assert await cache.get("missing") is None
    assert await cache.chain(None) == []


@pytest.mark.anyio
async def test_a_bad_manifest_in_the_bucket_raises(storage: Storage) -> None:
    await storage.put_bytes(manifest_key("bad"), document(seq="x"), mime="application/json")

    with pytest.raises(ManifestError):
        await ManifestCache(storage).get("bad")


def test_the_cache_is_bounded_by_file_entries_and_keeps_the_newest() -> None:
    cache = ManifestCache(storage=None, max_files=3)  # type: ignore[arg-type]
    two = manifest({f"f{i}": FileRef(HASH, 1, "text/plain") for i in range(2)})
    five = manifest({f"f{i}": FileRef(HASH, 1, "text/plain") for i in range(5)})

    cache.put("a", Loaded(two, ""))
    cache.put("b", Loaded(two, ""))
    assert list(cache.entries) == ["b"]
    cache.put("c", Loaded(five, ""))
    assert list(cache.entries) == ["c"]
    assert cache.files == 5


def test_the_cache_is_bounded_by_manifests_when_asked() -> None:
    cache = ManifestCache(storage=None, max_entries=2)  # type: ignore[arg-type]
    one = manifest({"index.html": FileRef(HASH, 1, "text/html")})

    for job_id in ("a", "b", "c"):
        cache.put(job_id, Loaded(one, ""))

    assert list(cache.entries) == ["b", "c"]
    assert cache.files == 2
