"""deployer/packs.py: which files are packed, how they are grouped, and what a pack holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import deployer.packs
from deployer.packs import Member, build_pack, packable, plan_packs
from shared.core.errors import ValidationError
from shared.storage.archive import Entry, open_root, walk_tree


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def members(root: Path, files: dict[str, bytes]) -> list[Member]:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    listed = {e.rel: e for e in walk_tree(root, max_files=1000, max_bytes=10**7)}
    return [Member(sha(data), listed[rel]) for rel, data in files.items()]


def changed(entry: Entry) -> ValidationError:
    return ValidationError(f"{entry.rel} changed")


def test_only_small_non_empty_files_are_packable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployer.packs, "PACK_FILE_MAX_BYTES", 10)

    fits = {size: packable(Entry("f", "f", size)) for size in (0, 1, 10, 11)}

    assert fits == {0: False, 1: True, 10: True, 11: False}


def test_too_few_files_are_not_packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployer.packs, "PACK_MIN_FILES", 3)
    monkeypatch.setattr(deployer.packs, "TINY_PACK_BYTES", 2)
    found = members(tmp_path, {"a": b"1", "b": b"23"})  # 3 bytes: more than tiny

    assert plan_packs(found) == []


def test_a_few_tiny_files_share_one_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployer.packs, "PACK_MIN_FILES", 3)
    monkeypatch.setattr(deployer.packs, "TINY_PACK_BYTES", 3)
    found = members(tmp_path, {"a": b"1", "b": b"23"})

    assert [[m.entry.rel for m in pack] for pack in plan_packs(found)] == [["a", "b"]]


def test_a_single_file_is_never_packed(tmp_path: Path) -> None:
    assert plan_packs(members(tmp_path, {"a": b"1"})) == []


def test_packs_close_once_they_reach_the_target_and_keep_listing_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deployer.packs, "PACK_MIN_FILES", 3)
    monkeypatch.setattr(deployer.packs, "PACK_TARGET_BYTES", 10)
    sizes = {"f0": 4, "f1": 5, "f2": 6, "f3": 3, "f4": 2}  # 4+5+6 >= 10, then 3+2
    found = members(tmp_path, {rel: b"x" * n for rel, n in sizes.items()})

    planned = plan_packs(found)

    assert [[m.entry.rel for m in pack] for pack in planned] == [["f0", "f1", "f2"], ["f3", "f4"]]


def test_a_pack_holds_its_files_back_to_back_and_is_named_by_its_hash(tmp_path: Path) -> None:
    files = {"index.html": b"<h1>hi</h1>", "a/app.js": b"console.log(1)", "a/b.css": b"p{}"}
    found = members(tmp_path, files)
    root_fd = open_root(tmp_path)
    try:
        pack = build_pack(root_fd, found, changed)
    finally:
        os.close(root_fd)

    assert pack.data == b"".join(files.values())
    assert pack.sha256 == sha(pack.data)
    for data in files.values():
        start = pack.offsets[sha(data)]
        assert pack.data[start : start + len(data)] == data


def test_a_file_that_no_longer_matches_its_hash_refuses_the_pack(tmp_path: Path) -> None:
    found = members(tmp_path, {"a.js": b"console.log(1)", "b.js": b"console.log(2)"})
    (tmp_path / "b.js").write_bytes(b"console.log(3)")  # same size, other bytes
    root_fd = open_root(tmp_path)
    try:
        with pytest.raises(ValidationError, match=r"b\.js changed"):
            build_pack(root_fd, found, changed)
    finally:
        os.close(root_fd)
