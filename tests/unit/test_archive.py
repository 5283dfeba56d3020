"""shared/storage/archive.py: packing never follows links; extraction refuses anything unsafe."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.core.errors import ValidationError
from shared.storage.archive import check_name, extract, pack, walk_tree

LIMITS = {"max_files": 1000, "max_bytes": 10 * 1024 * 1024}


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hi</h1>")
    (root / "sub" / "a.css").write_text("body{}")
    (root / "sub" / "deeper" / "b.bin").write_bytes(bytes(range(256)))
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)


def tarball(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    """Write a tar.gz with exactly these members (no filtering on our side)."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def file_member(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return member(name), data


# --- walk_tree / pack -----------------------------------------------------


def test_walk_tree_yields_every_regular_file_with_its_size(tmp_path: Path) -> None:
    make_tree(tmp_path)

    entries = {e.rel: e.size for e in walk_tree(tmp_path, **LIMITS)}

    assert entries == {"index.html": 11, "run.sh": 10, "sub/a.css": 6, "sub/deeper/b.bin": 256}


def test_walk_tree_order_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    """Same tree, same order: archives of one commit are byte-for-byte comparable."""
    first, second = tmp_path / "first", tmp_path / "second"
    names = ["b", "a", "c/z", "c/y", "d"]
    for root, order in ((first, names), (second, names[::-1])):
        for name in order:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(name)

    walk = [e.rel for e in walk_tree(first, **LIMITS)]

    assert walk == [e.rel for e in walk_tree(second, **LIMITS)]
    assert sorted(walk) == sorted(names)


def test_pack_skips_git_and_symlinks_reporting_each_skip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    (src / ".git" / "objects").mkdir(parents=True)
    (src / ".git" / "config").write_text("[core]")
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "linkdir").symlink_to(src / "sub")
    os.mkfifo(src / "fifo")
    skipped: list[tuple[str, str]] = []

    count = pack(src, tmp_path / "a.tar.gz", **LIMITS, on_skip=lambda r, k: skipped.append((r, k)))

    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["index.html", "run.sh", "sub/a.css", "sub/deeper/b.bin"]
    assert count == 4
    assert sorted(skipped) == [
        ("fifo", "special file"),
        ("linkdir", "symlink"),
        ("passwd", "symlink"),
    ]


def test_pack_then_extract_round_trips_contents_and_exec_bit(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    make_tree(src)

    packed = pack(src, tmp_path / "a.tar.gz", **LIMITS)
    extracted = extract(tmp_path / "a.tar.gz", out, **LIMITS)

    assert packed == extracted == 4
    for rel in ("index.html", "run.sh", "sub/a.css", "sub/deeper/b.bin"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    assert os.access(out / "run.sh", os.X_OK)
    assert not os.access(out / "index.html", os.X_OK)


def test_pack_refuses_more_than_max_files(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"f{i}").write_text("x")

    with pytest.raises(ValidationError, match="more than 3 files"):
        pack(tmp_path, tmp_path.parent / "a.tar.gz", max_files=3, max_bytes=1000)


def test_pack_refuses_more_than_max_bytes(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 2000)

    with pytest.raises(ValidationError, match="more than 1024 bytes"):
        pack(tmp_path, tmp_path.parent / "a.tar.gz", max_files=10, max_bytes=1024)


def test_pack_refuses_a_file_name_with_a_control_character(tmp_path: Path) -> None:
    (tmp_path / "bad\nname").write_text("x")

    with pytest.raises(ValidationError, match="control character"):
        pack(tmp_path, tmp_path.parent / "a.tar.gz", **LIMITS)


# --- check_name -----------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "a/b", "a.b/c-d_e", "ünïcode/名前"])
def test_check_name_accepts_plain_relative_paths(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "..", "a/../b", "./a", "a//b", "a/", "a\\b", "a\tb", "a\x7fb", "x" * 1025],
)
def test_check_name_refuses_unsafe_paths(name: str) -> None:
    with pytest.raises(ValidationError):
        check_name(name)


# --- extract refusals -----------------------------------------------------

Case = Callable[[], tuple[tarfile.TarInfo, bytes | None]]

UNSAFE: dict[str, Case] = {
    "absolute": lambda: file_member("/etc/cron.d/evil"),
    "dotdot": lambda: file_member("../evil"),
    "nested_dotdot": lambda: file_member("sub/../../evil"),
    "backslash": lambda: file_member("..\\evil"),
    "newline": lambda: file_member("evil\nname"),
    "escape_char": lambda: file_member("evil\x1b[2Jname"),
    "symlink": lambda: (member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
    "relative_symlink": lambda: (member("link", tarfile.SYMTYPE, linkname="index.html"), None),
    "hardlink": lambda: (member("hard", tarfile.LNKTYPE, linkname="/etc/passwd"), None),
    "char_device": lambda: (member("tty", tarfile.CHRTYPE, devmajor=5, devminor=0), None),
    "block_device": lambda: (member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
    "fifo": lambda: (member("pipe", tarfile.FIFOTYPE), None),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_extract_refuses_unsafe_members(tmp_path: Path, case: str) -> None:
    archive = tarball(tmp_path / "a.tar.gz", file_member("index.html"), UNSAFE[case]())
    out = tmp_path / "out"

    with pytest.raises(ValidationError):
        extract(archive, out, **LIMITS)

    # nothing was written outside the destination, and no link was created
    assert not (tmp_path / "evil").exists()
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert sorted(p.name for p in out.rglob("*")) in ([], ["index.html"])


def test_extract_refuses_more_than_max_files(tmp_path: Path) -> None:
    archive = tarball(tmp_path / "a.tar.gz", *(file_member(f"f{i}") for i in range(4)))

    with pytest.raises(ValidationError, match="exceeds 3 files"):
        extract(archive, tmp_path / "out", max_files=3, max_bytes=1000)
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_extract_refuses_more_than_max_bytes_before_writing_it(tmp_path: Path) -> None:
    archive = tarball(
        tmp_path / "a.tar.gz", file_member("small", b"x" * 10), file_member("big", b"y" * 2000)
    )

    with pytest.raises(ValidationError, match="1024 bytes"):
        extract(archive, tmp_path / "out", max_files=10, max_bytes=1024)
    assert not (tmp_path / "out" / "big").exists()


def test_extract_accepts_directories_and_nested_files(tmp_path: Path) -> None:
    archive = tarball(
        tmp_path / "a.tar.gz",
        (member("sub/", tarfile.DIRTYPE, mode=0o755), None),
        file_member("sub/page.html", b"<p>"),
    )

    assert extract(archive, tmp_path / "out", **LIMITS) == 1
    assert (tmp_path / "out" / "sub" / "page.html").read_bytes() == b"<p>"


@pytest.mark.parametrize(
    "blob",
    [b"", b"definitely not a tarball", b"\x1f\x8b\x08\x00garbage-after-gzip-magic"],
    ids=["empty", "text", "bad_gzip"],
)
def test_extract_of_an_unreadable_archive_is_a_validation_error(
    tmp_path: Path, blob: bytes
) -> None:
    (tmp_path / "a.tar.gz").write_bytes(blob)

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "a.tar.gz", tmp_path / "out", **LIMITS)


def test_extract_of_a_truncated_archive_is_a_validation_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    pack(src, tmp_path / "a.tar.gz", **LIMITS)
    data = (tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "cut.tar.gz", tmp_path / "out", **LIMITS)


def test_extract_of_a_bit_flipped_archive_is_a_validation_error(tmp_path: Path) -> None:
    """Corruption inside the gzip stream must not yield a partial, 'successful' source."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"page{i:02}.html").write_text(f"<p>page {i}</p>\n" * 500)
    pack(src, tmp_path / "a.tar.gz", **LIMITS)
    data = bytearray((tmp_path / "a.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.tar.gz").write_bytes(bytes(data))

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "flipped.tar.gz", tmp_path / "out", **LIMITS)
