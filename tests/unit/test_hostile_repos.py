"""Hostile repositories against the real git: remote helpers, leaked environment,
git bombs, stalled servers, submodules, and what gets archived from a clone (straight
from ``git archive``, never a checkout) or packed from a tree."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from shared.core.errors import ValidationError
from shared.storage.archive import extract, pack
from tests.integration.helpers import make_repo
from tests.unit.test_archive import read_archive
from tests.unit.test_hostile_urls import Listener
from uploader.clone import CloneError, CloneSettings, CloneTimedOut, clone, export, parse_tokens
from uploader.netcheck import Resolution

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def settings(**overrides: object) -> CloneSettings:
    values: dict[str, object] = {
        "timeout_s": 30,
        "max_files": 1000,
        "max_bytes": 64 << 20,
        "allow_local": True,
    }
    values.update(overrides)
    return CloneSettings(**values)  # type: ignore[arg-type]


def git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=stdin,
        capture_output=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout.decode().strip()


def exported(
    tmp_path: Path, url: str, **overrides: object
) -> tuple[int, dict[str, bytes], list[tuple[str, str]]]:
    """Clone ``url`` and export its source archive: (file count, files, skips)."""
    dest = tmp_path / "dest"
    clone(url, dest, ref=None, settings=settings())
    assert [p.name for p in dest.iterdir()] == [".git"]  # never checked out
    skipped: list[tuple[str, str]] = []
    archive = tmp_path / "src.tar.zst"
    count = export(
        dest, archive, settings=settings(**overrides), on_skip=lambda r, k: skipped.append((r, k))
    )
    return count, read_archive(archive), skipped


def git_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.startswith("git ")]


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% {marker}",
        "ext::sh -c 'touch {marker}'",
        "--upload-pack=touch {marker}",
        "-u touch {marker}",
        "fd::17",
        "file://{repo}/../$(touch {marker})",
        "{repo} --upload-pack=touch {marker}",
    ],
)
def test_remote_helpers_and_options_never_run(tmp_path: Path, url: str) -> None:
    repo = make_repo(tmp_path / "repo", {"index.html": "hi"})
    marker = tmp_path / "marker"
    with pytest.raises(ValidationError):
        clone(
            url.format(marker=marker, repo=repo), tmp_path / "dest", ref=None, settings=settings()
        )
    assert not marker.exists()
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "-b", "main --no-local"])
def test_option_looking_refs_are_refused_before_git(tmp_path: Path, ref: str) -> None:
    from uploader.repourl import validate_ref

    with pytest.raises(ValidationError, match="invalid ref"):
        validate_ref(ref)


def test_git_never_sees_the_daemon_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo", {"index.html": "hi"})
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    dump = tmp_path / "git-env.txt"
    real_git = subprocess.run(
        ["which", "git"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (wrapper / "git").write_text(
        f'#!/bin/sh\nenv >> {dump}\necho "ARGV $*" >> {dump}\nexec {real_git} "$@"\n'
    )
    (wrapper / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper}:{os.environ['PATH']}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    monkeypatch.setenv("BUILDQ_API_TOKENS", "api-secret-value")
    monkeypatch.setenv("GIT_SSH_COMMAND", "touch /tmp/never")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.hooksPath'='/evil'")
    tokens = parse_tokens("example.com=token-secret-value")
    commit = clone(
        f"file://{repo}", tmp_path / "dest", ref="main", settings=settings(tokens=tokens)
    )
    assert len(commit) == 40
    seen = dump.read_text()
    assert "ARGV clone" in seen
    for secret in ("aws-secret-value", "api-secret-value", "token-secret-value", "/evil"):
        assert secret not in seen
    for name in ("AWS_", "BUILDQ_", "GIT_SSH_COMMAND", "GIT_CONFIG_PARAMETERS"):
        assert f"\n{name}" not in "\n" + seen
    assert "GIT_CONFIG_NOSYSTEM=1" in seen
    assert f"GIT_CONFIG_GLOBAL={os.devnull}" in seen
    assert "GIT_TERMINAL_PROMPT=0" in seen
    assert "=protocol.allow\n" in seen
    assert "=core.hooksPath\n" in seen
    assert "\nHOME=/root\n" not in seen


def test_a_git_bomb_is_refused_before_checkout(tmp_path: Path) -> None:
    """One 1 MiB blob referenced 1,000 times: a tiny pack, a 1 GiB checkout."""
    repo = tmp_path / "bomb"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    blob = git(repo, "hash-object", "-w", "--stdin", stdin=b"\0" * (1 << 20))
    tree = blob
    kind, mode = "blob", "100644"
    for _ in range(3):
        entries = "".join(f"{mode} {kind} {tree}\tf{i}\n" for i in range(10))
        tree = git(repo, "mktree", stdin=entries.encode())
        kind, mode = "tree", "040000"
    commit = git(repo, "commit-tree", tree, "-m", "bomb")
    git(repo, "update-ref", "refs/heads/main", commit)
    dest = tmp_path / "dest"
    started = time.monotonic()
    with pytest.raises(CloneError, match="would exceed 67108864 bytes"):
        clone(f"file://{repo}", dest, ref=None, settings=settings())
    assert time.monotonic() - started < 20
    checked_out = [p for p in dest.rglob("*") if ".git" not in p.parts] if dest.exists() else []
    assert checked_out == []
    with pytest.raises(CloneError, match="more than 100 files"):
        clone(
            f"file://{repo}",
            tmp_path / "d2",
            ref=None,
            settings=settings(max_files=100, max_bytes=1 << 40),
        )


def test_a_stalled_server_is_killed_at_the_timeout(tmp_path: Path) -> None:
    server = Listener()
    try:
        stalled = settings(
            timeout_s=1.5,
            resolution=Resolution(resolver=lambda h, p: ["127.0.0.1"], allowed=lambda a: True),
        )
        started = time.monotonic()
        with pytest.raises(CloneTimedOut, match=r"timed out after 1\.5s"):
            clone(
                f"https://stall.invalid:{server.port}/a/b.git",
                tmp_path / "d",
                ref=None,
                settings=stalled,
            )
        assert time.monotonic() - started < 4
        assert len(server.connections) == 1
        assert not [p for p in git_processes() if "stall.invalid" in p]
    finally:
        server.close()


def test_submodules_are_never_fetched(tmp_path: Path) -> None:
    inner = make_repo(tmp_path / "inner", {"secret.txt": "from a file:// submodule"})
    outer = make_repo(tmp_path / "outer", {"index.html": "hi"})
    git(outer, "-c", "protocol.file.allow=always", "submodule", "add", f"file://{inner}", "sub")
    git(outer, "commit", "--quiet", "-m", "submodule")

    count, files, skipped = exported(tmp_path, f"file://{outer}")

    assert sorted(files) == [".gitmodules", "index.html"]
    assert files["index.html"] == b"hi"
    assert (count, skipped) == (2, [])


def test_repository_symlinks_are_never_archived_and_each_is_reported(tmp_path: Path) -> None:
    secret = tmp_path / "secret.env"
    secret.write_text("AWS_SECRET_ACCESS_KEY=host-secret\n")
    repo = make_repo(tmp_path / "repo", {"index.html": "hi", "sub/page.html": "p"})
    for name, target in [
        ("passwd", "/etc/passwd"),
        ("environ", "/proc/self/environ"),
        ("aws", "/root/.aws/credentials"),
        ("secret", str(secret)),
        ("up", "../../.."),
        ("inside", "index.html"),
        ("sub/deeper", "../sub"),
    ]:
        (repo / name).symlink_to(target)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "links")

    count, files, skipped = exported(tmp_path, f"file://{repo}")

    assert count == 2
    assert sorted(files) == ["index.html", "sub/page.html"]
    payload = b"".join(files.values())
    assert b"host-secret" not in payload
    assert b"root:" not in payload
    assert sorted(skipped) == sorted(
        (name, "symlink")
        for name in ("passwd", "environ", "aws", "secret", "up", "inside", "sub/deeper")
    )
    out = tmp_path / "out"
    assert extract(tmp_path / "src.tar.zst", out, max_files=100, max_bytes=1 << 20) == 2
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_tree_symlinks_and_hard_links_are_never_packed(tmp_path: Path) -> None:
    """A tree on disk (the way a build's output is walked): links are never followed."""
    secret = tmp_path / "secret.env"
    secret.write_text("AWS_SECRET_ACCESS_KEY=host-secret\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "index.html").write_text("hi")
    (tree / "sub" / "page.html").write_text("p")
    (tree / "passwd").symlink_to("/etc/passwd")
    (tree / "secret").symlink_to(secret)
    os.link(secret, tree / "hardlinked.env")
    skipped: list[tuple[str, str]] = []
    archive = tmp_path / "src.tar.zst"

    count = pack(
        tree, archive, max_files=100, max_bytes=1 << 20, on_skip=lambda r, k: skipped.append((r, k))
    )

    assert count == 2
    files = read_archive(archive)
    assert sorted(files) == ["index.html", "sub/page.html"]
    assert b"host-secret" not in b"".join(files.values())
    assert sorted(skipped) == [
        ("hardlinked.env", "hard link"),
        ("passwd", "symlink"),
        ("secret", "symlink"),
    ]


def test_a_repositorys_export_attributes_are_ignored_like_a_checkout(tmp_path: Path) -> None:
    """.gitattributes may not hide files from the archive or expand placeholders in it;
    the conversions a checkout applies (eol) still apply."""
    repo = make_repo(
        tmp_path / "repo",
        {
            ".gitattributes": "hidden.txt export-ignore\nver.txt export-subst\n"
            "*.bat text eol=crlf\n",
            "hidden.txt": "still shipped",
            "ver.txt": "$Format:%H$",
            "run.bat": "a\nb\n",
        },
    )

    _, files, _ = exported(tmp_path, f"file://{repo}")

    assert files["hidden.txt"] == b"still shipped"
    assert files["ver.txt"] == b"$Format:%H$"
    assert files["run.bat"] == b"a\r\nb\r\n"


def test_export_enforces_the_caps_on_what_it_writes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {f"f{i}.txt": "x" * 100 for i in range(5)})

    with pytest.raises(ValidationError, match="more than 4 files"):
        exported(tmp_path, f"file://{repo}", max_files=4)


def test_export_past_its_deadline_is_killed_and_reported(tmp_path: Path) -> None:
    """32 MiB through a pipe cannot finish within a millisecond: git is killed."""
    repo = make_repo(tmp_path / "repo", {"big.bin": b"\0" * (32 << 20)})
    dest = tmp_path / "dest"
    clone(f"file://{repo}", dest, ref=None, settings=settings())

    with pytest.raises(CloneTimedOut, match=r"git archive timed out after 0\.001s"):
        export(dest, tmp_path / "src.tar.zst", settings=settings(timeout_s=0.001))
    assert not [p for p in git_processes() if str(dest) in p]


def test_export_of_a_broken_clone_is_a_clone_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"index.html": "hi"})
    dest = tmp_path / "dest"
    clone(f"file://{repo}", dest, ref=None, settings=settings())
    for pack_file in (dest / ".git" / "objects" / "pack").glob("*.pack"):
        pack_file.chmod(0o644)
        pack_file.write_bytes(b"")  # the objects are gone

    with pytest.raises(CloneError, match="git archive failed"):
        export(dest, tmp_path / "src.tar.zst", settings=settings())
    assert not [p for p in git_processes() if str(dest) in p]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"bad\xffname.html", "not valid UTF-8"),
        (b"line\nbreak.html", "control character"),
        (b"esc\x1b[31m.html", "control character"),
        (b"back\\slash.html", "backslash"),
        (b"/".join([b"d" * 250] * 5) + b".html", "longer than"),
    ],
)  # fmt: skip
def test_bad_file_names_fail_with_a_clear_message(
    tmp_path: Path, name: bytes, message: str
) -> None:
    root = tmp_path / "tree"
    path = os.path.join(os.fsencode(root), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"x")
    with pytest.raises(ValidationError, match=message):
        pack(root, tmp_path / "a.tar.zst", max_files=10, max_bytes=1 << 20)
    git(root, "init", "--quiet", "--initial-branch=main")
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "-m", "bad name")
    with pytest.raises(ValidationError, match=message):
        exported(tmp_path, f"file://{root}")
