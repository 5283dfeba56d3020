"""deployer/source.py: the source archive is fetched with one GET and extracted as it
streams (moto S3 in-process), larger than the first inline MiB included; a damaged
archive changes nothing beyond its destination and still closes the response."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from deployer.source import BlobReader, fetch_source
from shared.core.errors import ValidationError
from shared.storage.archive import pack
from shared.storage.s3 import INLINE_BYTES, Blob, Storage, source_key
from tests.unit import test_pipeline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

settings = test_pipeline.settings
storage = test_pipeline.storage
LIMITS = {"max_files": 1000, "max_bytes": 64 << 20}


def archive_of(root: Path, files: dict[str, bytes], dest: Path) -> bytes:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    pack(root, dest, max_files=1000, max_bytes=64 << 20)
    return dest.read_bytes()


async def test_a_source_larger_than_the_inline_read_is_streamed_into_place(
    storage: Storage, tmp_path: Path
) -> None:
    # Incompressible contents, so the archive itself is several streamed chunks.
    files = {f"assets/{n}.bin": os.urandom(700_000) for n in range(4)}
    files["index.html"] = b"<h1>big</h1>"
    data = archive_of(tmp_path / "repo", files, tmp_path / "src.tar.zst")
    assert len(data) > 2 * INLINE_BYTES
    await storage.put_bytes(source_key("job-big"), data, mime="application/zstd")

    count = await fetch_source(storage, "job-big", tmp_path / "out", **LIMITS)

    assert count == len(files)
    for rel, content in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == content


async def test_a_legacy_tar_gz_is_read_when_the_zstd_source_is_absent(
    storage: Storage, tmp_path: Path
) -> None:
    from tests.unit.test_pipeline_sources import legacy_tar_gz

    await storage.put_bytes(
        source_key("job-old", legacy=True),
        legacy_tar_gz({"a.txt": b"a", "b/c.txt": b"c"}),
        mime="application/gzip",
    )

    assert await fetch_source(storage, "job-old", tmp_path / "out", **LIMITS) == 2
    assert (tmp_path / "out" / "b" / "c.txt").read_bytes() == b"c"


async def test_a_truncated_streamed_source_is_refused(storage: Storage, tmp_path: Path) -> None:
    files = {f"{n}.bin": os.urandom(600_000) for n in range(4)}
    data = archive_of(tmp_path / "repo", files, tmp_path / "src.tar.zst")
    await storage.put_bytes(source_key("job-cut"), data[: len(data) - 5000], mime="x")

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        await fetch_source(storage, "job-cut", tmp_path / "out", **LIMITS)


async def test_a_source_over_the_caps_is_refused_before_the_file_past_them(
    storage: Storage, tmp_path: Path
) -> None:
    files = {f"{n:02}.bin": os.urandom(300_000) for n in range(12)}
    data = archive_of(tmp_path / "repo", files, tmp_path / "src.tar.zst")
    await storage.put_bytes(source_key("job-many"), data, mime="application/zstd")

    with pytest.raises(ValidationError, match="exceeds 3 files"):
        await fetch_source(storage, "job-many", tmp_path / "out", max_files=3, max_bytes=1 << 30)
    assert len(list((tmp_path / "out").iterdir())) == 3
    # The abandoned response is closed; the same object can be fetched again.
    assert await fetch_source(storage, "job-many", tmp_path / "again", **LIMITS) == 12


def test_the_blob_reader_hands_out_the_inline_body_in_pieces() -> None:
    reader = io.BufferedReader(BlobReader(Blob(b"abcdef", "x", "", 6)), buffer_size=4)
    assert reader.peek(4)[:4] == b"abcd"
    assert reader.read(5) == b"abcde"
    assert reader.read() == b"f"
    assert reader.read() == b""
