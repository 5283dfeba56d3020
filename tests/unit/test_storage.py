"""shared/storage/s3.py: Content-Types, and the bucket API against moto in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.core.errors import StorageError
from shared.core.settings import Settings
from shared.storage.s3 import ObjectNotFound, Storage, content_type, make_s3_client


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
    return Storage(make_s3_client(settings), "unit-bucket", concurrency=4)


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
