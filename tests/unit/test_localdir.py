"""shared/storage/localdir.py: what the directory backend adds to the storage
contract (tests/integration/test_storage_backends.py runs that on both backends):
crash-safe writes, a safe key-to-path mapping, and the storage setting."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from shared.core.errors import ConfigError, StorageError
from shared.core.settings import load_settings
from shared.storage.backend import open_storage
from shared.storage.localdir import TRAILER_BYTES, LocalStorage
from shared.storage.objects import InvalidKeyError
from shared.storage.s3 import INLINE_BYTES, S3Storage


@pytest.fixture
async def storage(tmp_path: Path) -> LocalStorage:
    backend = LocalStorage(tmp_path / "root", "bucket", concurrency=4)
    await backend.ensure_bucket()
    return backend


def _files(storage: LocalStorage) -> list[str]:
    return sorted(str(p.relative_to(storage.base)) for p in storage.base.rglob("*") if p.is_file())


class FailingReader(io.RawIOBase):
    """A file object whose second read fails, as a disk or a changed file would."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(errno.EIO, "input/output error")
        return b"partial"


@pytest.mark.anyio
async def test_a_write_that_fails_midway_keeps_the_old_version_and_no_temp_file(
    storage: LocalStorage,
) -> None:
    await storage.put_bytes("blobs/x", b"old", mime="text/plain")

    with pytest.raises(StorageError, match="input/output error"):
        await storage.put_fileobj("blobs/x", FailingReader())  # type: ignore[arg-type]

    assert await storage.get("blobs/x") == (b"old", "text/plain")
    assert _files(storage) == ["blobs/x~"]


@pytest.mark.anyio
async def test_a_failed_rename_is_a_storage_error_and_changes_nothing(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await storage.put_bytes("blobs/x", b"old", mime="text/plain")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "no space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match="no space left"):
        await storage.put_bytes("blobs/x", b"new", mime="text/plain")

    assert await storage.get("blobs/x") == (b"old", "text/plain")
    assert _files(storage) == ["blobs/x~"]


@pytest.mark.anyio
async def test_a_put_fsyncs_the_file_before_the_rename_and_the_directory_after(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await storage.put_bytes("blobs/existing-dir/x", b"1", mime="text/plain")
    events.clear()

    await storage.put_bytes("blobs/existing-dir/y", b"2", mime="text/plain")

    assert events == ["fsync-file", "rename", "fsync-dir"]


@pytest.mark.anyio
async def test_leftovers_of_a_crashed_write_are_neither_listed_nor_read(
    storage: LocalStorage,
) -> None:
    await storage.put_bytes("sites/j/a.html", b"a", mime="text/html")
    (storage.base / "sites" / "j" / ".tmpcrash.tmp").write_bytes(b"half a file")

    assert [o.key for o in await storage.list_objects("")] == ["sites/j/a.html"]
    assert await storage.get("sites/j/a.html") == (b"a", "text/html")


@pytest.mark.anyio
async def test_a_reader_keeps_the_version_it_opened_across_an_overwrite(
    storage: LocalStorage,
) -> None:
    old = b"o" * (INLINE_BYTES * 2)
    await storage.put_bytes("blobs/big", old, mime="text/plain")

    blob = await storage.read("blobs/big")
    await storage.put_bytes("blobs/big", b"n" * (INLINE_BYTES * 2), mime="text/plain")
    data = blob.body
    assert blob.rest is not None
    async for chunk in blob.rest:
        data += chunk

    assert data == old
    assert (await storage.get("blobs/big"))[0][:1] == b"n"


@pytest.mark.anyio
async def test_an_object_file_starts_with_its_bytes_and_ends_with_a_fixed_trailer(
    storage: LocalStorage,
) -> None:
    await storage.put_bytes("manifests/j.json", b'{"version":1}', mime="application/json")

    raw = storage.path_of("manifests/j.json").read_bytes()

    assert raw.startswith(b'{"version":1}')
    assert len(raw) == len(b'{"version":1}') + TRAILER_BYTES


@pytest.mark.anyio
async def test_a_damaged_object_file_is_a_storage_error(storage: LocalStorage) -> None:
    await storage.put_bytes("blobs/x", b"data", mime="text/plain")
    path = storage.path_of("blobs/x")
    path.write_bytes(path.read_bytes()[:-1])

    with pytest.raises(StorageError, match="trailer"):
        await storage.read("blobs/x")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "key", ["a", "a/b", "..x", ".hidden/.x", "a~", "%2E%2E/x", "dir/~", "ü/€", "a b/c?d#e"]
)
async def test_every_key_maps_inside_the_bucket_and_round_trips(
    storage: LocalStorage, key: str
) -> None:
    path = storage.path_of(key)

    assert storage.base in path.parents
    assert not any(part.startswith(".") for part in path.relative_to(storage.base).parts)
    await storage.put_bytes(key, key.encode(), mime="text/plain")
    assert [o.key for o in await storage.list_objects("")] == [key]


@pytest.mark.anyio
async def test_an_object_and_a_prefix_of_the_same_name_coexist(storage: LocalStorage) -> None:
    await storage.put_bytes("docs", b"file", mime="text/plain")
    await storage.put_bytes("docs/index.html", b"page", mime="text/html")

    assert (await storage.get("docs"))[0] == b"file"
    assert [o.key for o in await storage.list_objects("docs")] == ["docs", "docs/index.html"]


@pytest.mark.anyio
async def test_a_segment_too_long_for_a_file_name_is_refused(storage: LocalStorage) -> None:
    with pytest.raises(InvalidKeyError, match="too long"):
        await storage.put_bytes("blobs/" + "x" * 300, b"1", mime="text/plain")
    assert _files(storage) == []


@pytest.mark.anyio
async def test_a_delete_removes_emptied_directories_but_not_the_bucket(
    storage: LocalStorage,
) -> None:
    await storage.put_bytes("sites/j/a/b.html", b"1", mime="text/html")
    await storage.put_bytes("sites/k.html", b"1", mime="text/html")

    await storage.delete_keys(["sites/j/a/b.html"])
    assert not (storage.base / "sites" / "j").exists()
    await storage.delete_keys(["sites/k.html"])

    assert storage.base.is_dir()
    assert list(storage.base.iterdir()) == []
    await storage.put_bytes("sites/j/a/b.html", b"2", mime="text/html")  # and back again
    assert (await storage.get("sites/j/a/b.html"))[0] == b"2"


def test_a_bucket_name_that_is_no_directory_name_is_refused(tmp_path: Path) -> None:
    for bucket in ("", "a/b", ".", ".."):
        with pytest.raises(InvalidKeyError):
            LocalStorage(tmp_path, bucket)


def test_storage_dir_selects_the_directory_backend(tmp_path: Path) -> None:
    settings = load_settings({"BUILDQ_STORAGE_DIR": str(tmp_path / "s")})

    storage = open_storage(settings)

    assert isinstance(storage, LocalStorage)
    assert storage.base == tmp_path / "s" / "buildq"


def test_without_storage_dir_s3_is_used(tmp_path: Path) -> None:
    settings = load_settings(
        {"BUILDQ_S3_ENDPOINT_URL": "http://127.0.0.1:9", "BUILDQ_STORAGE_DIR": ""}
    )

    assert settings.storage_dir is None
    assert isinstance(open_storage(settings), S3Storage)


def test_storage_dir_and_an_s3_endpoint_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BUILDQ_STORAGE_DIR"):
        load_settings(
            {"BUILDQ_STORAGE_DIR": str(tmp_path), "BUILDQ_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
        )
