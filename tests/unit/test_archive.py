"""shared/storage/archive.py: packing never follows links; repacking a tar stream keeps
only regular files; extraction (zstd, and the tar.gz of older sources) refuses anything
unsafe."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from shared.core.errors import ValidationError
from shared.storage import archive as archive_module
from shared.storage.archive import check_name, extract, pack, repack, walk_tree

LIMITS = {"max_files": 1000, "max_bytes": 10 * 1024 * 1024}
FORMATS = ("zst", "gz")


def read_archive(path: Path) -> dict[str, bytes]:
    """A source archive's regular files, read with tarfile (not our reader)."""
    with (
        path.open("rb") as fh,
        zstandard.ZstdDecompressor().stream_reader(fh) as raw,
        tarfile.open(fileobj=raw, mode="r|") as tar,
    ):
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hi</h1>")
    (root / "sub" / "a.css").write_text("body{}")
    (root / "sub" / "deeper" / "b.bin").write_bytes(bytes(range(256)))
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """An uncompressed tar with exactly these members (no filtering on our side)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tarball(path: Path, *members: tuple[tarfile.TarInfo, bytes | None], fmt: str = "gz") -> Path:
    """Write a tar.gz (an older source) or a tar.zst with exactly these members."""
    raw = tar_bytes(*members)
    if fmt == "gz":
        with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    else:
        path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(raw))
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

    count = pack(src, tmp_path / "a.tar.zst", **LIMITS, on_skip=lambda r, k: skipped.append((r, k)))

    names = sorted(read_archive(tmp_path / "a.tar.zst"))
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


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_extract_refuses_unsafe_members(tmp_path: Path, case: str, fmt: str) -> None:
    archive = tarball(tmp_path / "a.tar", file_member("index.html"), UNSAFE[case](), fmt=fmt)
    out = tmp_path / "out"

    with pytest.raises(ValidationError):
        extract(archive, out, **LIMITS)

    # nothing was written outside the destination, and no link was created
    assert not (tmp_path / "evil").exists()
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert sorted(p.name for p in out.rglob("*")) in ([], ["index.html"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_refuses_more_than_max_files(tmp_path: Path, fmt: str) -> None:
    archive = tarball(tmp_path / "a.tar", *(file_member(f"f{i}") for i in range(4)), fmt=fmt)

    with pytest.raises(ValidationError, match="exceeds 3 files"):
        extract(archive, tmp_path / "out", max_files=3, max_bytes=1000)
    assert len(list((tmp_path / "out").iterdir())) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_refuses_more_than_max_bytes_before_writing_it(tmp_path: Path, fmt: str) -> None:
    archive = tarball(
        tmp_path / "a.tar",
        file_member("small", b"x" * 10),
        file_member("big", b"y" * 2000),
        fmt=fmt,
    )

    with pytest.raises(ValidationError, match="1024 bytes"):
        extract(archive, tmp_path / "out", max_files=10, max_bytes=1024)
    assert not (tmp_path / "out" / "big").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_accepts_directories_and_nested_files(tmp_path: Path, fmt: str) -> None:
    archive = tarball(
        tmp_path / "a.tar",
        (member("sub/", tarfile.DIRTYPE, mode=0o755), None),
        file_member("sub/page.html", b"<p>"),
        fmt=fmt,
    )

    assert extract(archive, tmp_path / "out", **LIMITS) == 1
    assert (tmp_path / "out" / "sub" / "page.html").read_bytes() == b"<p>"


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_keeps_the_exec_bit_and_mtime_whatever_the_umask(tmp_path: Path, fmt: str) -> None:
    archive = tarball(
        tmp_path / "a.tar",
        (member("run.sh", mode=0o775, mtime=1_600_000_000), b"#!/bin/sh\n"),
        (member("d/page.html", mode=0o664, mtime=1_500_000_000), b"<p>"),
        fmt=fmt,
    )
    old = os.umask(0o077)
    try:
        extract(archive, tmp_path / "out", **LIMITS)
    finally:
        os.umask(old)

    out = tmp_path / "out"
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "d" / "page.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "d").stat().st_mode) == 0o755
    assert (out / "run.sh").stat().st_mtime == 1_600_000_000
    assert (out / "d" / "page.html").stat().st_mtime == 1_500_000_000


def test_extract_streams_large_files_and_long_names_intact(tmp_path: Path) -> None:
    """Contents larger than one read, names beyond ustar's 100 bytes (pax and prefix)."""
    big = os.urandom(3 * (1 << 20) + 123)
    pax_name = "/".join(["d" * 200, "e" * 200, "page.html"])
    prefix_name = "p" * 120 + "/q.html"
    archive = tarball(
        tmp_path / "a.tar",
        file_member("big.bin", big),
        file_member(pax_name, b"pax"),
        file_member(prefix_name, b"prefix"),
        file_member("名前/ünïcode.txt", b"utf8"),
        fmt="zst",
    )

    assert extract(archive, tmp_path / "out", **LIMITS) == 4
    out = tmp_path / "out"
    assert (out / "big.bin").read_bytes() == big
    assert (out / pax_name).read_bytes() == b"pax"
    assert (out / prefix_name).read_bytes() == b"prefix"
    assert (out / "名前" / "ünïcode.txt").read_bytes() == b"utf8"


def test_extract_of_many_directories_keeps_few_open(tmp_path: Path) -> None:
    """More directories than MAX_OPEN_DIRS: fds are recycled, every file lands."""
    count = archive_module.MAX_OPEN_DIRS * 3
    names = [f"a{i % 7}/b{i}/c/page.html" for i in range(count)]
    archive = tarball(tmp_path / "a.tar", *(file_member(n, n.encode()) for n in names), fmt="zst")
    before = len(os.listdir("/proc/self/fd"))

    assert extract(archive, tmp_path / "out", **LIMITS) == count

    assert len(os.listdir("/proc/self/fd")) == before
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == name.encode()


def test_extract_never_writes_through_a_symlink_already_in_the_destination(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    (out / "index.html").symlink_to(outside / "index.html")

    for name in ("sub/page.html", "index.html"):
        archive = tarball(tmp_path / "a.tar", file_member(name, b"evil"), fmt="zst")
        with pytest.raises(ValidationError, match="corrupt or unreadable"):
            extract(archive, out, **LIMITS)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (file_member("a", b"file"), file_member("a/b", b"under a file")),
        ((member("a/", tarfile.DIRTYPE, mode=0o755), None), file_member("a", b"over a dir")),
    ],
    ids=["file_then_child", "dir_then_file"],
)
def test_extract_refuses_a_file_and_a_directory_of_one_name(
    tmp_path: Path,
    first: tuple[tarfile.TarInfo, bytes | None],
    second: tuple[tarfile.TarInfo, bytes],
) -> None:
    archive = tarball(tmp_path / "a.tar", first, second, fmt="zst")

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(archive, tmp_path / "out", **LIMITS)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"definitely not a tarball",
        b"\x1f\x8b\x08\x00garbage-after-gzip-magic",
        b"\x28\xb5\x2f\xfdgarbage-after-zstd-magic",
        zstandard.ZstdCompressor().compress(b"not a tar header" * 64),
    ],
    ids=["empty", "text", "bad_gzip", "bad_zstd", "zstd_of_no_tar"],
)
def test_extract_of_an_unreadable_archive_is_a_validation_error(
    tmp_path: Path, blob: bytes
) -> None:
    (tmp_path / "a.tar.zst").write_bytes(blob)

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "a.tar.zst", tmp_path / "out", **LIMITS)


def packed(tmp_path: Path, fmt: str, pages: int = 5) -> bytes:
    """A packed tree of ``pages`` files, as zstd (pack) or as an older tar.gz."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(pages):
        (src / f"page{i:02}.html").write_text(f"<p>page {i}</p>\n" * 500)
    pack(src, tmp_path / "a.tar.zst", **LIMITS)
    if fmt == "zst":
        return (tmp_path / "a.tar.zst").read_bytes()
    tarball(
        tmp_path / "a.tar.gz",
        *(file_member(p.name, p.read_bytes()) for p in sorted(src.iterdir())),
        fmt="gz",
    )
    return (tmp_path / "a.tar.gz").read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_of_a_truncated_archive_is_a_validation_error(tmp_path: Path, fmt: str) -> None:
    data = packed(tmp_path, fmt)
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "cut", tmp_path / "out", **LIMITS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_of_a_bit_flipped_archive_is_a_validation_error(tmp_path: Path, fmt: str) -> None:
    """Corruption inside the compressed stream must not yield a partial, 'successful'
    source (zstd's checksum, gzip's CRC)."""
    data = bytearray(packed(tmp_path, fmt, pages=50))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped").write_bytes(bytes(data))

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "flipped", tmp_path / "out", **LIMITS)


def test_extract_of_an_archive_with_trailing_garbage_is_a_validation_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "tail").write_bytes(packed(tmp_path, "zst") + b"trailing bytes")

    with pytest.raises(ValidationError, match="corrupt or unreadable"):
        extract(tmp_path / "tail", tmp_path / "out", **LIMITS)


# --- repack (git archive's tar stream) ---------------------------------------------


def repacked(
    tmp_path: Path, raw: bytes, *, max_files: int = 1000, max_bytes: int = 1 << 20
) -> tuple[int, dict[str, bytes], list[tuple[str, str]]]:
    skipped: list[tuple[str, str]] = []
    with (tmp_path / "out.tar.zst").open("wb") as out:
        count = repack(
            io.BytesIO(raw),
            out,
            max_files=max_files,
            max_bytes=max_bytes,
            on_skip=lambda r, k: skipped.append((r, k)),
        )
    return count, read_archive(tmp_path / "out.tar.zst"), skipped


def test_repack_keeps_regular_files_and_reports_what_it_leaves_out(tmp_path: Path) -> None:
    global_header = tarfile.TarInfo("pax_global_header")
    global_header.type = tarfile.XGLTYPE
    global_header.pax_headers = {"comment": "c0ffee"}
    long_name = "/".join(["d" * 120, "page.html"])
    raw = tar_bytes(
        (global_header, None),
        (member("sub/", tarfile.DIRTYPE, mode=0o775), None),
        file_member("sub/page.html", b"<p>"),
        (member("run.sh", mode=0o775), b"#!/bin/sh\n"),
        file_member(long_name, b"long"),
        (member("passwd", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        (member("sub/.git/config", mode=0o644), b"[core]"),
        (member("hard", tarfile.LNKTYPE, linkname="run.sh"), None),
        (member("pipe", tarfile.FIFOTYPE), None),
    )

    count, files, skipped = repacked(tmp_path, raw)

    assert count == 3
    assert files == {"sub/page.html": b"<p>", "run.sh": b"#!/bin/sh\n", long_name: b"long"}
    assert skipped == [("passwd", "symlink"), ("hard", "hard link"), ("pipe", "special file")]
    assert extract(tmp_path / "out.tar.zst", tmp_path / "x", **LIMITS) == 3
    assert os.access(tmp_path / "x" / "run.sh", os.X_OK)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad\udcffname.html", "not valid UTF-8"),
        ("line\nbreak.html", "control character"),
        ("back\\slash.html", "backslash"),
        ("../escape.html", "plain relative path"),
        ("/".join(["d" * 250] * 5), "longer than"),
    ],
)
def test_repack_refuses_a_bad_name_even_a_symlinks(tmp_path: Path, name: str, message: str) -> None:
    for info, data in (file_member(name), (member(name, tarfile.SYMTYPE, linkname="x"), None)):
        raw = tar_bytes(file_member("ok.html"), (info, data))
        with pytest.raises(ValidationError, match=message):
            repacked(tmp_path, raw)


def test_repack_counts_files_and_bytes_against_the_caps(tmp_path: Path) -> None:
    raw = tar_bytes(*(file_member(f"f{i}", b"x" * 100) for i in range(4)))

    with pytest.raises(ValidationError, match="more than 3 files"):
        repacked(tmp_path, raw, max_files=3)
    with pytest.raises(ValidationError, match="more than 250 bytes"):
        repacked(tmp_path, raw, max_bytes=250)
    assert repacked(tmp_path, raw, max_files=4, max_bytes=400)[0] == 4


def test_repack_of_a_truncated_stream_is_an_error(tmp_path: Path) -> None:
    raw = tar_bytes(file_member("a", b"x" * 5000), file_member("b"))

    with pytest.raises(ValidationError, match="ends in the middle"):
        repacked(tmp_path, raw[:3000])
