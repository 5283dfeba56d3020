"""uploader/repourl.py: only plain https (or, when allowed, local) URLs reach git."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.core.errors import ValidationError
from uploader.repourl import validate_ref, validate_repo_url


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "https://github.com/org/repo",
        "https://git.example.com:8443/team/sub/repo.git",
        "https://gitlab.example.com/a/b/c",
    ],
)
def test_plain_https_urls_are_accepted_unchanged(url: str) -> None:
    assert validate_repo_url(url, allow_local=False) == url
    assert validate_repo_url(url, allow_local=True) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://github.com/org/repo", "https://"),
        ("git://github.com/org/repo", "https://"),
        ("ssh://git@github.com/org/repo", "https://"),
        ("git@github.com:org/repo.git", "https://"),
        ("ext::sh -c x", "whitespace"),
        ("ext::sh", "remote-helper"),
        ("fd::17", "remote-helper"),
        ("-uhttps://x/y", "start with '-'"),
        ("--upload-pack=touch", "start with '-'"),
        ("https://user:token@github.com/org/repo", "credentials"),
        ("https://token@github.com/org/repo", "credentials"),
        ("https://github.com/org/repo?x=1", "query"),
        ("https://github.com/org/repo#frag", "query"),
        ("https://github.com/org/re po", "whitespace"),
        ("https://github.com/org/repo\n", "whitespace"),
        ("https://github.com/org/\x7frepo", "whitespace"),
        ("https://github.com/org/\x00repo", "whitespace"),
        ("https://github.com/", "host and a repository path"),
        ("https:///org/repo", "host and a repository path"),
        ("", "1-2048"),
        ("https://h/" + "a" * 2048, "1-2048"),
    ],
)
def test_dangerous_or_unsupported_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason.replace("?", r"\?")):
        validate_repo_url(url, allow_local=True)


@pytest.mark.parametrize("url", ["file:///srv/repo", "/srv/repo"])
def test_local_repositories_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ValidationError, match="BUILDQ_ALLOW_LOCAL_REPOS"):
        validate_repo_url(url, allow_local=False)


def test_file_url_of_an_existing_directory_is_accepted_when_allowed(tmp_path: Path) -> None:
    assert validate_repo_url(f"file://{tmp_path}", allow_local=True) == f"file://{tmp_path}"


def test_absolute_local_path_is_accepted_when_allowed(tmp_path: Path) -> None:
    assert validate_repo_url(str(tmp_path), allow_local=True) == str(tmp_path)


def test_file_url_of_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        validate_repo_url(f"file://{tmp_path}/missing", allow_local=True)


@pytest.mark.parametrize("url", ["file://otherhost/srv/repo", "file:///srv/repo?x=1"])
def test_file_url_must_be_a_plain_local_absolute_path(url: str) -> None:
    with pytest.raises(ValidationError, match="file:///absolute/path"):
        validate_repo_url(url, allow_local=True)


@pytest.mark.parametrize("ref", ["main", "v1.2.3", "feature/x-y", "release_2024", "a+b"])
def test_validate_ref_accepts_branch_and_tag_names(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    ["-x", "--upload-pack=x", "a..b", "x.lock", "a//b", "a/", "a.", "", "a b", "@{-1}", "a~1"],
)
def test_validate_ref_refuses_options_and_invalid_git_refs(ref: str) -> None:
    with pytest.raises(ValidationError, match="invalid ref"):
        validate_ref(ref)
