"""Cache trees: symlinks kept only when they stay inside, archives checked on the way in."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from deployer.cachetree import (
    HEADER_NAME,
    CacheTooLarge,
    changed,
    extract,
    pack,
    safe_link,
    shared_inodes,
    walk,
)
from shared.core.errors import ValidationError
from shared.storage.archive import compressor
from shared.storage.tarstream import Kind

HEADER = {"service": "shop", "kind": "node_modules", "key": "abc"}
BIG = 1 << 30


@pytest.mark.parametrize(
    ("rel", "target"),
    [
        (".bin/vite", "../vite/bin/vite.js"),  # npm's bin links
        ("vite", ".pnpm/vite@5.0.0/node_modules/vite"),  # pnpm's top-level links
        (".pnpm/a@1/node_modules/b", "../../b@2/node_modules/b"),
        ("a/b/c/l", "../../.."),  # the tree's root itself
        ("x", "y/"),
    ],
)
def test_links_that_stay_in_the_tree_are_safe(rel: str, target: str) -> None:
    assert safe_link(rel, target)


@pytest.mark.parametrize(
    ("rel", "target"),
    [
        ("x", "/etc/passwd"),
        ("x", "../outside"),  # one level above the tree
        (".bin/x", "../../outside"),
        ("m", "a/b/c/l/.."),  # with a/b/c/l -> ../../.. this would be the tree's parent
        ("x", "a/../../b"),
        ("x", "./y"),
        ("x", "a//b"),
        ("x", ""),
        ("x", "a\nb"),
        ("x", "a\\..\\b"),
    ],
)
def test_links_that_could_leave_the_tree_are_not(rel: str, target: str) -> None:
    assert not safe_link(rel, target)


def make_tree(root: Path) -> None:
    (root / "node_modules/vite/bin").mkdir(parents=True)
    (root / "node_modules/.bin").mkdir()
    script = root / "node_modules/vite/bin/vite.js"
    script.write_text("#!/usr/bin/env node\n")
    script.chmod(0o755)
    (root / "node_modules/vite/package.json").write_text('{"version": "5.0.0"}')
    (root / "node_modules/.package-lock.json").write_text("{}")
    os.symlink("../vite/bin/vite.js", root / "node_modules/.bin/vite")


def test_a_tree_round_trips_with_its_links_and_modes(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    os.symlink("/etc/passwd", tmp_path / "a/node_modules/.bin/evil")
    os.mkfifo(tmp_path / "a/node_modules/pipe")
    nodes, left_out = walk(tmp_path / "a", "node_modules", max_bytes=BIG, max_entries=1000)
    assert left_out == 2  # the link out and the FIFO
    pack(tmp_path / "a", nodes, tmp_path / "c.tar.zst", HEADER)

    (tmp_path / "b").mkdir()
    snapshot = extract(
        tmp_path / "c.tar.zst",
        tmp_path / "b",
        HEADER,
        tops=("node_modules",),
        max_bytes=BIG,
        max_entries=1000,
    )

    out = tmp_path / "b/node_modules"
    assert os.readlink(out / ".bin/vite") == "../vite/bin/vite.js"
    assert (out / ".bin/vite").read_text() == "#!/usr/bin/env node\n"
    assert os.access(out / "vite/bin/vite.js", os.X_OK)
    assert not os.access(out / "vite/package.json", os.X_OK)
    assert not (out / ".bin/evil").is_symlink()
    assert not (out / "pipe").exists()
    assert set(snapshot) == {n.rel for n in nodes}
    assert not changed(tmp_path / "b", snapshot, walk(tmp_path / "b", "node_modules",
                       max_bytes=BIG, max_entries=1000)[0])  # fmt: skip


def restored(tmp_path: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    make_tree(tmp_path / "a")
    nodes, _ = walk(tmp_path / "a", "node_modules", max_bytes=BIG, max_entries=1000)
    pack(tmp_path / "a", nodes, tmp_path / "c.tar.zst", HEADER)
    (tmp_path / "b").mkdir()
    snapshot = extract(
        tmp_path / "c.tar.zst", tmp_path / "b", HEADER, tops=("node_modules",),
        max_bytes=BIG, max_entries=1000,
    )  # fmt: skip
    return tmp_path / "b", snapshot


def now_walk(root: Path) -> list:  # type: ignore[type-arg]
    return walk(root, "node_modules", max_bytes=BIG, max_entries=1000)[0]


def test_a_file_rewritten_with_the_same_bytes_is_unchanged(tmp_path: Path) -> None:
    root, snapshot = restored(tmp_path)
    lock = root / "node_modules/.package-lock.json"
    lock.write_text("{}")  # npm rewrites its hidden lockfile on every install
    os.utime(lock, (2_000_000_000, 2_000_000_000))

    assert not changed(root, snapshot, now_walk(root))


def test_a_package_managers_state_file_counts_by_presence_only(tmp_path: Path) -> None:
    root, snapshot = restored(tmp_path)
    lock = root / "node_modules/.package-lock.json"
    lock.write_text('{"name": "app", "packages": {}}')  # npm wrote it anew: other size
    os.utime(lock, (2_000_000_000, 2_000_000_000))
    assert not changed(root, snapshot, now_walk(root))

    lock.unlink()
    assert changed(root, snapshot, now_walk(root))


def test_new_or_different_content_is_a_change(tmp_path: Path) -> None:
    root, snapshot = restored(tmp_path)
    pkg = root / "node_modules/vite/package.json"
    pkg.write_text('{"version": "5.0.1"}')  # same size, other bytes
    os.utime(pkg, (2_000_000_000, 2_000_000_000))
    assert changed(root, snapshot, now_walk(root))

    root2, snapshot2 = restored(tmp_path / "again")
    (root2 / "node_modules/new.js").write_text("x")
    assert changed(root2, snapshot2, now_walk(root2))
    assert changed(root2, None, now_walk(root2))


def test_a_top_that_is_a_link_or_missing_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real/secret").write_text("x")
    os.symlink(tmp_path / "real", tmp_path / "node_modules")
    assert walk(tmp_path, "node_modules", max_bytes=BIG, max_entries=10) == ([], 0)
    assert walk(tmp_path, ".npm/_cacache", max_bytes=BIG, max_entries=10) == ([], 0)


def test_a_tree_over_the_bound_is_too_large(tmp_path: Path) -> None:
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules/big").write_bytes(b"x" * 2048)
    with pytest.raises(CacheTooLarge):
        walk(tmp_path, "node_modules", max_bytes=1024, max_entries=10)


def test_hard_links_to_files_outside_the_trees_are_found(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "store/pkg.js").write_text("shared inside")
    os.link(tmp_path / "store/pkg.js", tmp_path / "node_modules/pkg.js")  # pnpm's way
    (tmp_path / "elsewhere").write_text("not ours")
    os.link(tmp_path / "elsewhere", tmp_path / "node_modules/stolen")
    nodes = [
        *walk(tmp_path, "store", max_bytes=BIG, max_entries=10)[0],
        *walk(tmp_path, "node_modules", max_bytes=BIG, max_entries=10)[0],
    ]
    outside = shared_inodes(nodes)
    kinds = {n.rel: n.inode in outside for n in nodes if n.kind is Kind.FILE}
    assert kinds == {"store/pkg.js": False, "node_modules/pkg.js": False,
                     "node_modules/stolen": True}  # fmt: skip


def archive(path: Path, members: list[tarfile.TarInfo], header: dict[str, str] = HEADER) -> Path:
    """A hand-made cache archive: the header, then ``members`` (files get 1 byte)."""
    with (
        path.open("wb") as fh,
        compressor().stream_writer(fh, closefd=False) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        data = __import__("json").dumps(header, sort_keys=True).encode()
        info = tarfile.TarInfo(HEADER_NAME)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("members", "header", "why"),
    [
        ([member("node_modules/a")], {**HEADER, "service": "other"}, "is for"),
        ([member("node_modules/x", tarfile.SYMTYPE, "/etc/passwd")], HEADER, "leaves its tree"),
        ([member("node_modules/x", tarfile.SYMTYPE, "../../x")], HEADER, "leaves its tree"),
        ([member("node_modules/x", tarfile.LNKTYPE, "etc/passwd")], HEADER, "hard link"),
        ([member("node_modules/../x")], HEADER, "plain relative"),
        ([member("/etc/x")], HEADER, "plain relative"),
        ([member("dist/index.html")], HEADER, "outside node_modules"),  # never the output
        ([member("node_modules/a", size=4096)], HEADER, "more than"),
        ([member("node_modules/a"), member("node_modules/a")], HEADER, "repeated"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], header: dict[str, str], why: str
) -> None:
    path = archive(tmp_path / "bad.tar.zst", members, header)
    (tmp_path / "dest").mkdir()
    with pytest.raises(ValidationError, match=why):
        extract(path, tmp_path / "dest", HEADER, tops=("node_modules",), max_bytes=1024,
                max_entries=100)  # fmt: skip
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "dest/dist").exists()


def test_a_file_is_never_written_through_a_link_in_the_archive(tmp_path: Path) -> None:
    (tmp_path / "dest/node_modules/real").mkdir(parents=True)
    path = archive(
        tmp_path / "bad.tar.zst",
        [member("node_modules/l", tarfile.SYMTYPE, "real"), member("node_modules/l/x")],
    )
    with pytest.raises(FileExistsError):  # the link is made last; "l" is a directory by then
        extract(path, tmp_path / "dest", HEADER, tops=("node_modules",), max_bytes=1024,
                max_entries=100)  # fmt: skip
    assert not (tmp_path / "dest/node_modules/real/x").exists()


def test_an_archive_without_a_header_or_damaged_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar.zst"
    with (
        plain.open("wb") as fh,
        compressor().stream_writer(fh, closefd=False) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(member("node_modules/a"), io.BytesIO(b"x"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(ValidationError, match="no header"):
        extract(plain, tmp_path / "dest", HEADER, tops=("node_modules",), max_bytes=BIG,
                max_entries=10)  # fmt: skip
    good = archive(tmp_path / "good.tar.zst", [member("node_modules/a")])
    damaged = tmp_path / "damaged.tar.zst"
    damaged.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(ValidationError, match="corrupt"):
        extract(damaged, tmp_path / "dest", HEADER, tops=("node_modules",), max_bytes=BIG,
                max_entries=10)  # fmt: skip
