"""shared/storage/s3.py: Content-Types, and the bucket API against moto in-process."""

from __future__ import annotations

import io
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from botocore.awsrequest import AWSRequest

from shared.core.errors import StorageError
from shared.core.settings import Settings
from shared.storage.s3 import (
    ObjectNotFound,
    S3Storage,
    Storage,
    content_type,
    drop_expect_for_small_bodies,
    make_s3_client,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("a/b/style.css", "text/css; charset=utf-8"),
        ("logo.svg", "image/svg+xml; charset=utf-8"),
        ("data.json", "application/json; charset=utf-8"),
        ("module.mjs", "text/javascript; charset=utf-8"),
        ("readme.txt", "text/plain; charset=utf-8"),
        ("img.png", "image/png"),
        ("photo.jpg", "image/jpeg"),
        ("blob.unknownext", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(name: str, expected: str) -> None:
    assert content_type(name) == expected


def test_content_type_of_javascript_is_utf8_text() -> None:
    js = content_type("app.js")

    # the platform's mime table decides between the two registered names
    assert js in ("text/javascript; charset=utf-8", "application/javascript; charset=utf-8")


def test_binary_types_get_no_charset() -> None:
    for name in ("a.png", "a.woff2", "a.wasm", "a.bin", "a.zip"):
        assert "charset" not in content_type(name), name


@pytest.fixture
def storage(aws: None, settings: Settings) -> Storage:
    return S3Storage(make_s3_client(settings), "unit-bucket", concurrency=4)


@pytest.mark.anyio
async def test_a_connecting_storage_makes_its_client_once_off_the_event_loop(
    aws: None, settings: Settings
) -> None:
    loop_thread = threading.get_ident()
    made_in: list[int] = []

    def connect() -> S3Client:
        made_in.append(threading.get_ident())
        time.sleep(0.05)  # widens the window in which the other calls race for it
        return make_s3_client(settings)

    storage = S3Storage(None, "unit-bucket", concurrency=4, connect=connect)
    assert made_in == []  # nothing made until a call needs it

    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c", "d"):
            tg.start_soon(partial(storage.exists, f"k/{name}"))
    await storage.ensure_bucket()
    await storage.put_bytes("k/a", b"1", mime="text/plain")

    assert len(made_in) == 1
    assert made_in[0] != loop_thread
    assert [o.key for o in await storage.list_objects("k/")] == ["k/a"]


def test_a_storage_needs_a_client_or_a_way_to_connect() -> None:
    with pytest.raises(ValueError, match="client"):
        S3Storage(None, "unit-bucket")


@pytest.mark.anyio
async def test_ensure_bucket_creates_it_once(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.check()

    await storage.ensure_bucket()
    await storage.ensure_bucket()  # already there: no error

    await storage.check()


@pytest.mark.anyio
async def test_put_bytes_then_get_round_trips_body_and_type(storage: Storage) -> None:
    await storage.ensure_bucket()

    await storage.put_bytes("sites/j/index.html", b"<h1>hi</h1>", mime="text/html; charset=utf-8")

    assert await storage.get("sites/j/index.html") == (b"<h1>hi</h1>", "text/html; charset=utf-8")


@pytest.mark.anyio
async def test_put_json_is_compact_and_sorted(storage: Storage) -> None:
    await storage.ensure_bucket()

    await storage.put_json("aliases/web.json", {"seq": 2, "id": "abc"})

    assert await storage.get("aliases/web.json") == (b'{"id":"abc","seq":2}', "application/json")


@pytest.mark.anyio
async def test_put_file_guesses_the_content_type_and_get_to_file_downloads(
    storage: Storage, tmp_path: Path
) -> None:
    await storage.ensure_bucket()
    (tmp_path / "style.css").write_text("body{}")

    await storage.put_file("sites/j/style.css", tmp_path / "style.css")
    await storage.get_to_file("sites/j/style.css", tmp_path / "copy.css")

    assert (tmp_path / "copy.css").read_text() == "body{}"
    assert (await storage.get("sites/j/style.css"))[1] == "text/css; charset=utf-8"


@pytest.mark.anyio
async def test_exists_is_true_only_for_stored_objects(storage: Storage) -> None:
    await storage.ensure_bucket()
    await storage.put_bytes("present", b"1", mime="text/plain")

    assert await storage.exists("present") is True
    assert await storage.exists("missing") is False


@pytest.mark.anyio
async def test_get_of_a_missing_object_raises_object_not_found(storage: Storage) -> None:
    await storage.ensure_bucket()

    with pytest.raises(ObjectNotFound) as info:
        await storage.get("missing")

    assert isinstance(info.value, StorageError)


@pytest.mark.anyio
async def test_get_to_file_of_a_missing_object_raises_object_not_found(
    storage: Storage, tmp_path: Path
) -> None:
    await storage.ensure_bucket()

    with pytest.raises(ObjectNotFound):
        await storage.get_to_file("sources/missing.tar.gz", tmp_path / "x")


@pytest.mark.anyio
async def test_missing_bucket_reads_as_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.get("anything")


@pytest.mark.anyio
async def test_list_objects_reads_every_page_and_delete_keys_removes_them(
    storage: Storage,
) -> None:
    await storage.ensure_bucket()
    for name in ("a", "b", "c"):
        await storage.put_bytes(f"blobs/{name}", b"1", mime="text/plain")
    await storage.put_bytes("other/x", b"1", mime="text/plain")
    real = storage.client.list_objects_v2
    storage.client.list_objects_v2 = lambda **kw: real(**kw, MaxKeys=1)  # type: ignore[method-assign]

    listed = await storage.list_objects("blobs/")
    await storage.delete_keys(["blobs/a", "blobs/b"])

    storage.client.list_objects_v2 = real  # type: ignore[method-assign]
    assert [(o.key, o.size) for o in listed] == [("blobs/a", 1), ("blobs/b", 1), ("blobs/c", 1)]
    assert [o.key for o in await storage.list_objects("")] == ["blobs/c", "other/x"]


@pytest.mark.parametrize(("size", "expect"), [(0, False), (1024 * 1024, False), (2**20 + 1, True)])
def test_small_puts_go_without_expect_100_continue(size: int, expect: bool) -> None:
    request = AWSRequest(
        method="PUT",
        url="http://s3.test/b/k",
        data=io.BytesIO(b"x" * size),
        headers={"Expect": "100-continue"},
    )

    drop_expect_for_small_bodies(request)

    assert ("Expect" in request.headers) is expect


def test_the_client_drops_expect_on_put_object(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit")
    client = make_s3_client(settings)
    sent: dict[str, str] = {}

    def capture(request: AWSRequest, **_: object) -> None:
        sent.update(request.headers)
        raise RuntimeError("captured")  # stop before any network

    client.meta.events.register("before-send.s3.PutObject", capture)
    with pytest.raises(RuntimeError, match="captured"):
        client.put_object(Bucket="b", Key="k", Body=b"small")

    assert "Expect" not in sent
