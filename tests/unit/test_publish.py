"""Publishing reads only files inside the output tree: a file swapped for a symlink
(or a FIFO, a hard link, another size) between the listing and the upload is
refused, never followed to a host file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import deployer.publish
from deployer.publish import publish_dir
from shared.core.errors import ValidationError
from shared.storage.archive import Entry, open_entry, open_root, walk_tree

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
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put_fileobj(self, key: str, fileobj: BinaryIO, *, mime: str | None = None) -> None:
        self.objects[key] = fileobj.read()


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
        await publish_dir(storage, tree, "sites/j/", concurrency=2, **LIMITS)  # type: ignore[arg-type]
    assert all(HOST_SECRET.encode() not in data for data in storage.objects.values())


@pytest.mark.anyio
async def test_publish_uploads_every_file_from_its_fd(tree: Path) -> None:
    storage = RecordingStorage()
    count, size = await publish_dir(storage, tree, "sites/j/", concurrency=2, **LIMITS)  # type: ignore[arg-type]
    assert (count, size) == (2, len("<h1>hi</h1>") + len("console.log(1)"))
    assert storage.objects == {
        "sites/j/index.html": b"<h1>hi</h1>",
        "sites/j/assets/app.js": b"console.log(1)",
    }
