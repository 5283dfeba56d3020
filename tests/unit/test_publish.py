"""Publishing reads only files inside the output tree: a file swapped for a symlink
(or a FIFO, a hard link, another size) between the listing and the upload is
refused, never followed to a host file. Files become content-addressed blobs, known
blobs are not uploaded again, and the manifest is written last."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import deployer.packs
import deployer.publish
from deployer.publish import Published, Target, human_bytes, known_blobs, publish_site
from shared.core.errors import StorageError, ValidationError
from shared.storage.archive import Entry, open_entry, open_root, walk_tree
from shared.storage.digests import Digests
from shared.storage.manifest import (
    FileRef,
    Loaded,
    Manifest,
    ManifestCache,
    ManifestError,
    Stored,
    blob_key,
    manifest_key,
)

LIMITS = {"max_files": 1000, "max_bytes": 10 * 1024 * 1024}
HOST_SECRET = "host-only-secret"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    (out / "assets").mkdir(parents=True)
    (out / "index.html").write_text("<h1>hi</h1>")
    (out / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "shadow").write_text(HOST_SECRET)
    return out


def read(root: Path, entry: Entry) -> bytes:
    root_fd = open_root(root)
    try:
        fd = open_entry(root_fd, entry)
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def entries(root: Path) -> dict[str, Entry]:
    return {e.rel: e for e in walk_tree(root, **LIMITS)}


def test_open_entry_reads_a_listed_file(tree: Path) -> None:
    assert read(tree, entries(tree)["assets/app.js"]) == b"console.log(1)"


def swap_for_symlink(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def swap_dir_for_symlink(path: Path, target: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    path.symlink_to(target, target_is_directory=True)


def swap_for_fifo(path: Path, _target: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def swap_for_hard_link(path: Path, target: Path) -> None:
    path.unlink()
    os.link(target, path)


def grow(path: Path, _target: Path) -> None:
    path.write_text("much longer content than was listed")


@pytest.mark.parametrize(
    ("rel", "swap"),
    [
        ("index.html", swap_for_symlink),
        ("assets/app.js", swap_for_symlink),
        ("assets/app.js", swap_dir_for_symlink),
        ("index.html", swap_for_fifo),
        ("index.html", swap_for_hard_link),
        ("index.html", grow),
    ],
)
def test_a_file_changed_after_the_listing_is_refused(
    tree: Path, rel: str, swap: Callable[[Path, Path], None]
) -> None:
    listed = entries(tree)[rel]
    target = tree.parent / "shadow"
    if swap is swap_dir_for_symlink:
        shadow_dir = tree.parent / "etc"
        shadow_dir.mkdir()
        (shadow_dir / "app.js").write_text("console.log(2)")  # same size as listed
        swap(tree / "assets", shadow_dir)
    else:
        swap(tree / rel, target)
    with pytest.raises(ValidationError, match="changed after it was listed"):
        read(tree, listed)


class RecordingStorage:
    """The Storage calls a publish makes, kept in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []

    async def put_bytes(self, key: str, data: bytes, *, mime: str) -> None:
        self.puts.append(key)
        self.objects[key] = data

    async def put_fileobj(self, key: str, fileobj: Any, *, mime: str | None = None) -> None:
        self.puts.append(key)
        self.objects[key] = fileobj.read()

    async def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)


TARGET = Target("job-1", "web", 1, spa=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def publish(storage: RecordingStorage, root: Path, **kwargs: Any) -> Published:
    return await publish_site(storage, root, TARGET, concurrency=2, **LIMITS, **kwargs)  # type: ignore[arg-type]


def manifest_of(storage: RecordingStorage, job_id: str = "job-1") -> Manifest:
    return Manifest.decode(storage.objects[manifest_key(job_id)])


@pytest.mark.anyio
async def test_publish_refuses_a_symlink_swapped_in_after_the_walk(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def walk_then_swap(root: Path, **kwargs: Any) -> Iterator[Entry]:
        listed = list(walk_tree(root, **kwargs))
        swap_for_symlink(tree / "index.html", tree.parent / "shadow")
        return iter(listed)

    monkeypatch.setattr(deployer.publish, "walk_tree", walk_then_swap)
    storage = RecordingStorage()
    with pytest.raises(ValidationError, match=r"index\.html"):
        await publish(storage, tree)
    assert all(HOST_SECRET.encode() not in data for data in storage.objects.values())
    assert manifest_key("job-1") not in storage.objects


@pytest.mark.anyio
async def test_publish_stores_each_file_as_a_blob_and_the_manifest_last(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deployer.packs, "TINY_PACK_BYTES", 0)  # two files: not packed
    storage = RecordingStorage()

    result = await publish(storage, tree, parent="job-0")

    home, app = b"<h1>hi</h1>", b"console.log(1)"
    assert (result.files, result.bytes, result.uploaded) == (2, len(home) + len(app), 2)
    assert storage.objects[blob_key(sha(home))] == home
    assert storage.objects[blob_key(sha(app))] == app
    assert storage.puts[-1] == manifest_key("job-1")
    manifest = manifest_of(storage)
    assert (manifest.service, manifest.seq, manifest.parent, manifest.spa) == (
        "web",
        1,
        "job-0",
        False,
    )
    assert manifest.files["index.html"] == FileRef(sha(home), len(home), "text/html; charset=utf-8")
    assert manifest.files["assets/app.js"].sha256 == sha(app)


@pytest.mark.anyio
async def test_known_blobs_are_not_uploaded_and_duplicates_go_once(tree: Path) -> None:
    (tree / "copy.html").write_text("<h1>hi</h1>")  # the same bytes as index.html
    storage = RecordingStorage()

    result = await publish(storage, tree, known={sha(b"console.log(1)"): Stored()})

    assert storage.puts == [blob_key(sha(b"<h1>hi</h1>")), manifest_key("job-1")]
    assert (result.files, result.uploaded) == (3, 1)
    assert result.summary() == "3 files (36 bytes): 1 uploaded, 2 already stored"
    assert len(manifest_of(storage).files) == 3


@pytest.mark.anyio
async def test_a_large_file_streams_and_is_hashed_on_the_way(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deployer.publish, "INLINE_UPLOAD_BYTES", 4)
    monkeypatch.setattr(deployer.packs, "PACK_FILE_MAX_BYTES", 4)  # as large: not packed
    storage = RecordingStorage()

    await publish(storage, tree)

    assert storage.objects[blob_key(sha(b"console.log(1)"))] == b"console.log(1)"


@pytest.mark.anyio
async def test_a_few_tiny_files_go_in_one_pack_then_the_manifest(tree: Path) -> None:
    storage = RecordingStorage()

    result = await publish(storage, tree)

    manifest = manifest_of(storage)
    (pack,) = {ref.pack for ref in manifest.files.values()}
    assert pack is not None
    assert storage.puts == [blob_key(pack), manifest_key("job-1")]  # 2 PUTs, not 3
    assert (result.uploaded, result.packs) == (2, 1)
    for rel, data in contents(tree).items():
        assert pack_span(storage, manifest.files[rel]) == data


@pytest.fixture
def many(tree: Path) -> Path:
    """The tree with 20 more small files and one large one: enough to pack."""
    for i in range(20):
        (tree / "icons" / f"i{i:02}.svg").parent.mkdir(exist_ok=True)
        (tree / "icons" / f"i{i:02}.svg").write_text(f"<svg>{i}</svg>" * (i + 1))
    (tree / "big.bin").write_bytes(b"B" * 1000)
    return tree


def contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def pack_span(storage: RecordingStorage, ref: FileRef) -> bytes:
    if ref.pack is None:
        return storage.objects[blob_key(ref.sha256)]
    return storage.objects[blob_key(ref.pack)][ref.offset : ref.offset + ref.size]


@pytest.mark.anyio
async def test_many_small_files_go_in_a_few_packs_read_back_by_offset(
    many: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deployer.packs, "PACK_TARGET_BYTES", 500)
    monkeypatch.setattr(deployer.packs, "PACK_FILE_MAX_BYTES", 999)  # big.bin goes alone
    storage = RecordingStorage()

    result = await publish(storage, many)

    manifest = manifest_of(storage)
    packs = {ref.pack for ref in manifest.files.values() if ref.pack is not None}
    assert (result.files, result.uploaded, result.packs) == (23, 23, len(packs))
    assert 1 < len(packs) < 22  # several files per pack, more than one pack
    assert len(storage.puts) == len(packs) + 2  # the packs, big.bin, the manifest
    assert storage.puts[-1] == manifest_key("job-1")
    assert manifest.files["big.bin"].pack is None
    for pack in packs:  # content-addressed like any blob
        assert sha(storage.objects[blob_key(pack)]) == pack
    for rel, data in contents(many).items():
        ref = manifest.files[rel]
        assert (ref.sha256, ref.size) == (sha(data), len(data))
        assert pack_span(storage, ref) == data


@pytest.mark.anyio
async def test_a_redeploy_reuses_packed_files_where_they_are(many: Path) -> None:
    first_store = RecordingStorage()
    await publish(first_store, many)
    first = manifest_of(first_store)
    cache = ManifestCache(storage=None)  # type: ignore[arg-type]
    cache.put("job-0", Loaded(first, ""))
    parent, known = await known_blobs(cache, "job-0")
    (many / "icons" / "i03.svg").write_text("<svg>changed</svg>")
    storage = RecordingStorage()

    result = await publish(storage, many, known=known, parent=parent)

    again = manifest_of(storage)
    assert result.uploaded == 1
    assert storage.puts == [blob_key(sha(b"<svg>changed</svg>")), manifest_key("job-1")]
    assert again.files["icons/i03.svg"].pack is None  # too few to pack: a blob of its own
    assert again.files["icons/i04.svg"] == first.files["icons/i04.svg"]  # same pack, offset
    assert again.parent == "job-0"


@pytest.mark.anyio
@pytest.mark.parametrize("way", ["inline", "streamed", "packed"])
async def test_a_file_rewritten_after_it_was_hashed_is_refused(
    tree: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    if way == "streamed":
        monkeypatch.setattr(deployer.publish, "INLINE_UPLOAD_BYTES", 4)
    if way == "packed":
        monkeypatch.setattr(deployer.packs, "PACK_MIN_FILES", 2)
    hash_all = deployer.publish._hash_all

    async def hash_then_rewrite(root_fd: int, entries: list[Entry], digests: Digests) -> list[str]:
        hashes = await hash_all(root_fd, entries, digests)
        (tree / "assets" / "app.js").write_text("console.log(2)")  # same size
        return hashes

    monkeypatch.setattr(deployer.publish, "_hash_all", hash_then_rewrite)
    storage = RecordingStorage()

    with pytest.raises(ValidationError, match="changed while it was published"):
        await publish(storage, tree)
    assert all(b"console.log(2)" not in data for data in storage.objects.values())
    assert manifest_key("job-1") not in storage.objects


def test_sizes_read_as_people_write_them() -> None:
    assert human_bytes(999) == "999 bytes"
    assert human_bytes(17_200_000) == "17.2 MB"
    assert human_bytes(1_500) == "1.5 kB"
    summary = Published(files=1758, bytes=17_200_000, uploaded=3, uploaded_bytes=10).summary()
    assert summary == "1758 files (17.2 MB): 3 uploaded, 1755 already stored"
    packed = Published(files=1701, bytes=11_800_000, uploaded=1699, uploaded_bytes=1, packs=3)
    assert packed.summary() == "1701 files (11.8 MB): 1699 uploaded in 3 packs, 2 already stored"


@pytest.mark.anyio
async def test_an_unreadable_live_manifest_means_uploading_everything() -> None:
    class BadManifests:
        async def get(self, job_id: str) -> Loaded | None:
            raise ManifestError("bad hash")

    parent, known = await known_blobs(BadManifests(), "job-0")  # type: ignore[arg-type]
    assert parent is None
    assert await known.where({sha(b"anything")}) == {}


class CountingManifests(ManifestCache):
    """Manifests in memory, each read counted; ``bad`` ones raise."""

    def __init__(self, chain: dict[str, tuple[str | None, list[bytes]]], bad: set[str]) -> None:
        super().__init__(storage=None)  # type: ignore[arg-type]
        self.reads: list[str] = []
        self.bad = bad
        for job_id, (parent, contents) in chain.items():
            files = {f"f{i}": FileRef(sha(c), len(c), "text/plain") for i, c in enumerate(contents)}
            self.put(job_id, Loaded(Manifest("web", 1, parent, False, files), ""))

    async def get(self, job_id: str) -> Loaded | None:
        self.reads.append(job_id)
        if job_id in self.bad:
            raise ManifestError("unreadable")
        return await super().get(job_id)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("wanted", "bad", "reads", "found"),
    [
        ([b"live"], set(), ["d"], [b"live"]),  # in the live manifest: nothing older read
        ([b"live", b"c"], set(), ["d", "c"], [b"live", b"c"]),
        ([b"b", b"a"], set(), ["d", "c", "b"], [b"b"]),  # REUSE_DEPTH: "a" is too old
        ([b"live", b"b"], {"c"}, ["d", "c"], [b"live"]),  # the newer knowledge holds
    ],
)
async def test_older_manifests_are_read_only_for_contents_the_newer_do_not_name(
    wanted: list[bytes], bad: set[str], reads: list[str], found: list[bytes]
) -> None:
    manifests = CountingManifests(
        {
            "d": (
                "c",
                [b"live", b"shared"],
            ),
            "c": ("b", [b"c", b"shared"]),
            "b": ("a", [b"b"]),
            "a": (None, [b"a"]),
        },
        bad,
    )
    parent, known = await known_blobs(manifests, "d")
    where = await known.where({sha(c) for c in wanted})
    assert parent == "d"
    assert manifests.reads == reads
    assert set(where) == {sha(c) for c in found}


@pytest.mark.anyio
async def test_a_failed_pack_upload_writes_no_manifest(many: Path) -> None:
    class FailingPacks(RecordingStorage):
        async def put_bytes(self, key: str, data: bytes, *, mime: str) -> None:
            if mime == deployer.publish.PACK_MIME:
                raise StorageError("S3 unreachable")
            await super().put_bytes(key, data, mime=mime)

    storage = FailingPacks()

    with pytest.raises(StorageError):
        await publish(storage, many)
    assert manifest_key("job-1") not in storage.objects
