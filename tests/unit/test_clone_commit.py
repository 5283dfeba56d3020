"""``ref`` may be a full commit id: that exact commit is fetched (pinned), on servers
that serve commits by id and, deeper, on those that do not; the clone's caps hold."""

from __future__ import annotations

from pathlib import Path

import pytest

import uploader.clone
from tests.unit.test_hostile_repos import git, settings
from uploader.clone import CloneError, clone, export
from uploader.repourl import is_commit_id, validate_ref


def history(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """main: first -> second; side: first -> side (commit ids by name)."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    ids: dict[str, str] = {}
    for name in ("first", "second"):
        (repo / "index.html").write_text(name)
        git(repo, "add", "--all")
        git(repo, "commit", "--quiet", "-m", name)
        ids[name] = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "--quiet", "-b", "side", ids["first"])
    (repo / "index.html").write_text("side")
    git(repo, "commit", "--quiet", "-am", "side")
    ids["side"] = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "--quiet", "main")
    return repo, ids


@pytest.mark.parametrize("name", ["first", "side"])
def test_a_commit_id_fetches_that_commit_even_after_the_branch_moved(
    tmp_path: Path, name: str
) -> None:
    repo, ids = history(tmp_path)
    dest = tmp_path / "dest"

    got = clone(f"file://{repo}", dest, ref=ids[name], settings=settings())

    assert got == ids[name]
    assert git(dest, "show", "HEAD:index.html") == name
    assert [p.name for p in dest.iterdir()] == [".git"]  # never checked out
    assert export(dest, tmp_path / "src.tar.zst", settings=settings()) == 1


def test_a_server_that_refuses_ids_is_searched_deeper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, ids = history(tmp_path)
    # Protocol v0 upload-pack refuses unadvertised objects unless the server allows it.
    base = (*uploader.clone.BASE_CONFIG, ("protocol.version", "0"))
    monkeypatch.setattr(uploader.clone, "BASE_CONFIG", base)

    got = clone(f"file://{repo}", tmp_path / "dest", ref=ids["first"], settings=settings())

    assert got == ids["first"]


def test_an_unknown_commit_is_a_clear_error(tmp_path: Path) -> None:
    repo, _ = history(tmp_path)

    with pytest.raises(CloneError, match=r"commit 0{40} not found"):
        clone(f"file://{repo}", tmp_path / "dest", ref="0" * 40, settings=settings())


def test_the_caps_hold_for_a_commit_fetch(tmp_path: Path) -> None:
    repo, ids = history(tmp_path)

    with pytest.raises(CloneError, match="more than 0 files"):
        clone(f"file://{repo}", tmp_path / "d", ref=ids["first"], settings=settings(max_files=0))


@pytest.mark.parametrize(
    ("ref", "commit"),
    [("a" * 40, True), ("A" * 40, True), ("b" * 64, True), ("a" * 39, False), ("main", False)],
)
def test_only_full_commit_ids_are_commits(ref: str, commit: bool) -> None:
    checked = validate_ref(ref)

    assert is_commit_id(checked) is commit
    assert checked == (ref.lower() if commit else ref)
