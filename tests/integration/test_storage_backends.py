"""The storage contract, run against both backends: a real moto S3 server over HTTP
and a LocalStorage directory. Whatever one answers, the other answers the same."""

from __future__ import annotations

import email.utils
import io
import json
import os
import uuid
from pathlib import Path

import anyio
import pytest

from shared.core.errors import StorageError
from shared.core.settings import load_settings
from shared.storage.localdir import LocalStorage
from shared.storage.objects import (
    Blob,
    InvalidKeyError,
    ObjectNotFound,
    RangeNotSatisfiable,
    Storage,
)
from shared.storage.s3 import INLINE_BYTES, S3Storage, make_s3_client

pytestmark = pytest.mark.integration

BACKENDS = ("s3", "localdir")
HOSTILE_KEYS = [
    "",
    "../escape",
    "a/../../escape",
    "a/./b",
    "/absolute",
    "a//b",
    "a/",
    "nul\x00byte",
    "new\nline",
    "a/..",
    "x" * 1025,
]


def _storage(kind: str, s3_url: str, tmp_path: Path, bucket: str) -> Storage:
    if kind == "s3":
        env = {"BUILDQ_S3_ENDPOINT_URL": s3_url, "BUILDQ_S3_BUCKET": bucket}
        settings = load_settings(env)
        return S3Storage(make_s3_client(settings), bucket, concurrency=8)
    return LocalStorage(tmp_path / "objects", bucket, concurrency=8)


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, s3_url: str, tmp_path: Path) -> Storage:
    backend = _storage(request.param, s3_url, tmp_path, f"c-{uuid.uuid4().hex[:12]}")
    await backend.ensure_bucket()
    return backend


async def _drain(blob: Blob) -> bytes:
    data = blob.body
    if blob.rest is not None:
        async for chunk in blob.rest:
            data += chunk
    return data


@pytest.mark.anyio
async def test_put_bytes_then_get_round_trips_body_and_type(storage: Storage) -> None:
    await storage.put_bytes("logs/a.jsonl", b'{"x":1}\n', mime="application/x-ndjson")

    assert await storage.get("logs/a.jsonl") == (b'{"x":1}\n', "application/x-ndjson")


@pytest.mark.anyio
async def test_put_json_is_compact_and_sorted(storage: Storage) -> None:
    await storage.put_json("deployments/j.json", {"b": 1, "a": [1, 2]})

    data, mime = await storage.get("deployments/j.json")
    assert data == b'{"a":[1,2],"b":1}'
    assert mime == "application/json"


@pytest.mark.anyio
async def test_put_file_guesses_the_type_and_get_to_file_copies(
    storage: Storage, tmp_path: Path
) -> None:
    (tmp_path / "style.css").write_text("body{}")

    await storage.put_file("sites/j/style.css", tmp_path / "style.css")
    await storage.get_to_file("sites/j/style.css", tmp_path / "copy.css")

    assert (tmp_path / "copy.css").read_text() == "body{}"
    assert (await storage.head("sites/j/style.css")).content_type == "text/css; charset=utf-8"


@pytest.mark.anyio
async def test_an_overwrite_replaces_bytes_and_type(storage: Storage) -> None:
    await storage.put_bytes("serve/j.json", b"old", mime="text/plain")
    await storage.put_bytes("serve/j.json", b"newer", mime="application/json")

    assert await storage.get("serve/j.json") == (b"newer", "application/json")
    assert (await storage.head("serve/j.json")).size == 5


@pytest.mark.anyio
async def test_read_answers_the_whole_object_with_its_metadata(storage: Storage) -> None:
    await storage.put_bytes("blobs/small", b"0123456789", mime="text/plain")

    blob = await storage.read("blobs/small")
    head = await storage.head("blobs/small")

    assert (blob.body, blob.size, blob.length, blob.partial) == (b"0123456789", 10, 10, False)
    assert blob.rest is None
    assert blob.content_type == head.content_type == "text/plain"
    assert blob.etag == head.etag
    assert blob.etag.startswith('"')
    assert len(blob.etag) > 2
    assert email.utils.parsedate_to_datetime(head.last_modified).tzinfo is not None
    assert (head.body, head.size) == (b"", 10)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("wanted", "body"),
    [((2, 5), b"2345"), ((5, None), b"56789"), ((7, 99), b"789"), ((0, 0), b"0")],
)
async def test_a_range_answers_its_bytes_and_the_whole_size(
    storage: Storage, wanted: tuple[int, int | None], body: bytes
) -> None:
    await storage.put_bytes("blobs/ranged", b"0123456789", mime="text/plain")

    blob = await storage.read("blobs/ranged", byte_range=wanted)

    assert (blob.body, blob.length, blob.size, blob.partial) == (body, len(body), 10, True)


@pytest.mark.anyio
async def test_a_range_past_the_end_is_not_satisfiable(storage: Storage) -> None:
    await storage.put_bytes("blobs/short", b"0123", mime="text/plain")
    await storage.put_bytes("blobs/empty", b"", mime="text/plain")

    with pytest.raises(RangeNotSatisfiable):
        await storage.read("blobs/short", byte_range=(4, None))
    with pytest.raises(RangeNotSatisfiable):
        await storage.read("blobs/empty", byte_range=(0, None))
    assert (await storage.read("blobs/empty")).body == b""


@pytest.mark.anyio
async def test_a_large_object_streams_past_the_inline_part(storage: Storage) -> None:
    data = os.urandom(INLINE_BYTES * 2 + 12345)
    await storage.put_fileobj("blobs/big", io.BytesIO(data), mime="application/octet-stream")

    whole = await storage.read("blobs/big")
    ranged = await storage.read("blobs/big", byte_range=(100, INLINE_BYTES + 500_000))

    assert len(whole.body) == INLINE_BYTES
    assert whole.rest is not None
    assert await _drain(whole) == data
    assert ranged.length == INLINE_BYTES + 500_000 - 100 + 1
    assert await _drain(ranged) == data[100 : INLINE_BYTES + 500_001]


@pytest.mark.anyio
async def test_a_stream_closed_early_releases_the_object(storage: Storage) -> None:
    await storage.put_bytes("blobs/big", b"x" * (INLINE_BYTES * 3), mime="text/plain")

    blob = await storage.read("blobs/big")
    assert blob.rest is not None
    async for _chunk in blob.rest:
        break
    await blob.rest.aclose()  # type: ignore[attr-defined]

    assert (await storage.head("blobs/big")).size == INLINE_BYTES * 3


@pytest.mark.anyio
async def test_a_missing_object_is_object_not_found(storage: Storage, tmp_path: Path) -> None:
    for call in (
        storage.get("blobs/none"),
        storage.read("blobs/none"),
        storage.read("blobs/none", byte_range=(0, 1)),
        storage.head("blobs/none"),
        storage.get_to_file("blobs/none", tmp_path / "none"),
    ):
        with pytest.raises(ObjectNotFound):
            await call
    assert not await storage.exists("blobs/none")
    assert not (tmp_path / "none").exists()


@pytest.mark.anyio
async def test_exists_is_true_only_for_stored_objects(storage: Storage) -> None:
    await storage.put_bytes("sources/j.tar.zst", b"z", mime="application/zstd")

    assert await storage.exists("sources/j.tar.zst")
    assert not await storage.exists("sources/j.tar")
    assert not await storage.exists("sources")


@pytest.mark.anyio
async def test_listing_is_in_key_order_across_levels(storage: Storage) -> None:
    keys = ["a/b", "a-c", "a0", "a/b/c", "a", "b/x.json", "A", "ä/x", ".well-known/x"]
    for key in keys:
        await storage.put_bytes(key, key.encode(), mime="text/plain")

    listed = await storage.list_objects("")

    assert [o.key for o in listed] == sorted(keys, key=lambda k: k.encode())
    assert [o.size for o in listed] == [len(o.key.encode()) for o in listed]
    assert all(o.last_modified.tzinfo is not None for o in listed)


@pytest.mark.anyio
async def test_a_prefix_may_end_inside_a_segment(storage: Storage) -> None:
    for key in ["blobs/ab1", "blobs/ab2", "blobs/ac", "blobsx", "manifests/ab"]:
        await storage.put_bytes(key, b"1", mime="text/plain")

    assert [o.key for o in await storage.list_objects("blobs/ab")] == ["blobs/ab1", "blobs/ab2"]
    assert [o.key for o in await storage.list_objects("blobs")] == [
        "blobs/ab1",
        "blobs/ab2",
        "blobs/ac",
        "blobsx",
    ]
    assert await storage.list_objects("nothing/") == []


@pytest.mark.anyio
async def test_keys_with_odd_characters_round_trip(storage: Storage) -> None:
    keys = ["sites/j/ü file %20~x.txt", "sites/j/~", "sites/j/%", "sites/j/a.b~c"]
    for key in keys:
        await storage.put_bytes(key, key.encode(), mime="text/plain")

    assert [o.key for o in await storage.list_objects("sites/j/")] == sorted(
        keys, key=lambda k: k.encode()
    )
    for key in keys:
        assert (await storage.get(key))[0] == key.encode()


@pytest.mark.anyio
async def test_two_thousand_objects_list_and_delete_in_full(storage: Storage) -> None:
    keys = [f"sites/many/{n:05d}.html" for n in range(2000)]
    limiter = anyio.CapacityLimiter(16)

    async def put(key: str) -> None:
        async with limiter:
            await storage.put_bytes(key, b"<p>", mime="text/html")

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(put, key)

    assert [o.key for o in await storage.list_objects("sites/many/")] == keys

    await storage.delete_keys([*keys, "sites/many/never-stored"])

    assert await storage.list_objects("sites/") == []


@pytest.mark.anyio
async def test_delete_leaves_other_keys(storage: Storage) -> None:
    for key in ("a/1", "a/2", "b/1"):
        await storage.put_bytes(key, b"x", mime="text/plain")

    await storage.delete_keys(["a/1", "b/1"])
    await storage.delete_keys([])

    assert [o.key for o in await storage.list_objects("")] == ["a/2"]


@pytest.mark.anyio
@pytest.mark.parametrize("key", HOSTILE_KEYS)
async def test_a_hostile_key_is_refused_and_changes_nothing(storage: Storage, key: str) -> None:
    await storage.put_bytes("keep/me", b"x", mime="text/plain")

    for call in (
        storage.put_bytes(key, b"evil", mime="text/plain"),
        storage.put_json(key, {}),
        storage.put_fileobj(key, io.BytesIO(b"evil")),
        storage.get(key),
        storage.read(key),
        storage.head(key),
        storage.exists(key),
        storage.delete_keys(["keep/me", key]),
    ):
        with pytest.raises(InvalidKeyError):
            await call

    assert [o.key for o in await storage.list_objects("")] == ["keep/me"]


@pytest.mark.anyio
@pytest.mark.parametrize("prefix", ["../", "/abs", "a//", "a/../", "nul\x00"])
async def test_a_hostile_prefix_is_refused(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidKeyError):
        await storage.list_objects(prefix)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_missing_bucket_fails_the_check_and_reads_as_not_found(
    kind: str, s3_url: str, tmp_path: Path
) -> None:
    backend = _storage(kind, s3_url, tmp_path, f"absent-{uuid.uuid4().hex[:8]}")

    with pytest.raises(StorageError):
        await backend.check()
    with pytest.raises(ObjectNotFound):
        await backend.get("x")
    with pytest.raises(ObjectNotFound):
        await backend.put_bytes("x", b"1", mime="text/plain")

    await backend.ensure_bucket()
    await backend.ensure_bucket()  # twice is fine
    await backend.check()
    assert await backend.list_objects("") == []


@pytest.mark.anyio
async def test_json_written_by_one_backend_reads_the_same_from_the_other(
    s3_url: str, tmp_path: Path
) -> None:
    value = {"id": "j", "status": "live", "nested": {"z": 1, "a": None}}
    written = []
    for kind in BACKENDS:
        backend = _storage(kind, s3_url, tmp_path, f"j-{uuid.uuid4().hex[:8]}")
        await backend.ensure_bucket()
        await backend.put_json("deployments/j.json", value)
        written.append(await backend.get("deployments/j.json"))

    assert written[0] == written[1]
    assert json.loads(written[0][0]) == value
