"""Digests taken at extraction spare a publish reading untouched files, and are never
trusted for a file changed after them: rewritten (even to the same size, with its
mtime set back), replaced by a rename, chmod-ed, or recorded in the seal's own clock
tick. The deployer's own change of owner carries them across; the build's does not."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

import deployer.publish
import shared.storage.digests
from deployer.sandbox import prepare_workdir, reclaim_workdir
from shared.storage.archive import Entry, extract_stream, pack, walk_tree
from shared.storage.digests import Digests, stamp_of
from shared.storage.manifest import Manifest, manifest_key
from tests.unit.test_publish import TARGET, RecordingStorage

LIMITS = {"max_files": 1000, "max_bytes": 10 * 1024 * 1024}
SITE = {"index.html": b"<h1>v1</h1>", "assets/app.js": b"console.log(1)", "a.txt": b"aaaa"}
TICK_S = 0.03  # longer than any coarse clock tick (4 ms at HZ=250, 10 ms at HZ=100)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extracted(tmp_path: Path, files: dict[str, bytes] = SITE) -> tuple[Path, Digests]:
    """``files`` packed as a source archive and extracted with digests (sealed at
    once: the last files written may share the seal's tick)."""
    src = tmp_path / "repo"
    write(src, files)
    archive = tmp_path / "src.tar.zst"
    pack(src, archive, **LIMITS)
    digests = Digests()
    dest = tmp_path / "work" / "src"
    with archive.open("rb") as fh:
        extract_stream(fh, dest, digests=digests, **LIMITS)
    return dest, digests


def written(tmp_path: Path, files: dict[str, bytes] = SITE) -> tuple[Path, Digests]:
    """``files`` written with their digests taken, sealed a clock tick later: every
    one of them is trusted until it changes."""
    dest = write(tmp_path / "work" / "src", files)
    digests = Digests()
    for rel, data in files.items():
        with open(dest / rel, "rb") as fh:
            digests.take(fh.fileno(), sha(data))
    time.sleep(TICK_S)
    digests.seal(dest)
    time.sleep(TICK_S)  # what follows changes files a tick after the seal
    return dest, digests


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def trusted(root: Path, digests: Digests) -> dict[str, str | None]:
    return {e.rel: digests.trusted(e.stamp) for e in walk_tree(root, **LIMITS)}


def test_extraction_records_each_file_s_digest_before_the_seal(tmp_path: Path) -> None:
    fresh = Digests()
    assert fresh.trusted(stamp_of(os.stat(tmp_path))) is None  # nothing before a seal

    dest, digests = extracted(tmp_path)
    seen = trusted(dest, digests)

    # Any file written in the seal's own tick is left out, never trusted wrongly.
    assert set(seen) == set(SITE)
    assert all(seen[rel] in (sha(SITE[rel]), None) for rel in SITE)


def test_a_file_recorded_in_the_seal_s_tick_waits_for_the_next_or_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"x")

    def recorded() -> Digests:
        digests = Digests()
        with open(tmp_path / "f", "rb") as fh:
            digests.take(fh.fileno(), sha(b"x"))
        return digests

    stamp = stamp_of(os.stat(tmp_path / "f"))
    digests = recorded()
    digests.seal(tmp_path)  # at once: very likely the same tick, so it seals again
    assert digests._sealed_ns > stamp[4]
    assert digests.trusted(stamp) == sha(b"x")

    # A clock that does not move past the file: never trusted.
    monkeypatch.setattr(shared.storage.digests, "_now_on", lambda _directory: stamp[4])
    monkeypatch.setattr(shared.storage.digests, "SEAL_WAIT_S", 0.01)
    stuck = recorded()
    stuck.seal(tmp_path)
    assert stuck.trusted(stamp) is None


def test_every_later_change_to_a_file_drops_its_digest(tmp_path: Path) -> None:
    dest, digests = written(tmp_path, {f"f{i}.txt": b"same" for i in range(5)})
    assert set(trusted(dest, digests).values()) == {sha(b"same")}

    f0 = dest / "f0.txt"  # rewritten in place, same size, mtime put back
    st = f0.stat()
    f0.write_bytes(b"SAME")
    os.utime(f0, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f0.stat().st_ino, f0.stat().st_size, f0.stat().st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    os.replace(dest / "f2.txt", dest / "f1.txt")  # another file renamed over it
    (dest / "f3.txt").chmod(0o600)
    os.link(dest / "f4.txt", tmp_path / "elsewhere")  # a link: ctime moves
    os.unlink(tmp_path / "elsewhere")

    after = trusted(dest, digests)
    assert after == {"f0.txt": None, "f1.txt": None, "f3.txt": None, "f4.txt": None}


def test_without_a_seal_nothing_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    digests = Digests()
    with open(tmp_path / "f", "rb") as fh:
        digests.take(fh.fileno(), sha(b"x"))
    time.sleep(TICK_S)
    digests.seal(tmp_path / "f")  # not a directory: O_TMPFILE fails, as on a filesystem without it
    assert digests.trusted(stamp_of(os.stat(tmp_path / "f"))) is None


def test_the_owner_handover_carries_digests_but_not_the_build_s_changes(tmp_path: Path) -> None:
    dest, digests = written(tmp_path)
    workdir = dest.parent
    me = os.getuid()  # a chown to the same owner moves ctimes as a real one does

    prepare_workdir(workdir, me, digests)
    time.sleep(TICK_S)
    (dest / "index.html").write_bytes(b"<h1>v2</h1>")  # "the build"
    time.sleep(TICK_S)
    reclaim_workdir(workdir, me, digests)
    time.sleep(TICK_S)

    assert trusted(dest, digests) == {
        "index.html": None,
        "assets/app.js": sha(SITE["assets/app.js"]),
        "a.txt": sha(SITE["a.txt"]),
    }


@pytest.mark.anyio
async def test_publish_reads_only_the_files_it_cannot_vouch_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, digests = written(tmp_path)
    (dest / "index.html").write_bytes(b"<h1>v2</h1>")  # changed by the build
    (dest / "new.css").write_bytes(b"body{}")  # made by the build
    opened: list[str] = []
    real_open = deployer.publish.open_entry

    def counting_open(root_fd: int, entry: Entry) -> int:
        opened.append(entry.rel)
        return real_open(root_fd, entry)

    monkeypatch.setattr(deployer.publish, "open_entry", counting_open)
    storage = RecordingStorage()
    known = {sha(data): deployer.publish.Stored() for data in SITE.values()}
    await deployer.publish.publish_site(
        storage,  # type: ignore[arg-type]
        dest,
        TARGET,
        known=known,
        concurrency=2,
        digests=digests,
        **LIMITS,
    )

    files = Manifest.decode(storage.objects[manifest_key("job-1")]).files
    assert {rel: ref.sha256 for rel, ref in files.items()} == {
        "index.html": sha(b"<h1>v2</h1>"),
        "assets/app.js": sha(SITE["assets/app.js"]),
        "a.txt": sha(SITE["a.txt"]),
        "new.css": sha(b"body{}"),
    }
    # Only these two were read to be hashed (their upload reads them again, in a pack).
    assert sorted(opened) == ["index.html", "new.css"]


def test_past_the_cap_files_are_left_to_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.storage.digests, "MAX_DIGESTS", 2)
    dest, digests = written(tmp_path)  # three files
    assert list(trusted(dest, digests).values()).count(None) == 1
    assert len(digests) == 2
