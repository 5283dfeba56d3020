"""shared/core/names.py: service names, derivation from URLs, relative directories."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.core.errors import ValidationError
from shared.core.names import NAME_RE, service_from_repo_url, validate_name, validate_relative_dir


@pytest.mark.parametrize("name", ["a", "0", "my-site", "a1-b2-c3", "x" * 63, "9-lives"])
def test_validate_name_accepts_lowercase_digits_and_dashes(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-lead", "Upper", "under_score", "dot.ted", "sp ace", "x" * 64, "a/b", "é", "a\n"],
)
def test_validate_name_refuses_everything_else(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid service name"):
        validate_name(name)


def test_validate_name_says_what_was_refused() -> None:
    with pytest.raises(ValidationError, match="invalid environment name"):
        validate_name("Prod", "environment")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://x/Team/My_Site.git", "my-site"),
        ("https://github.com/org/repo", "repo"),
        ("https://github.com/org/repo/", "repo"),
        ("https://gitlab.example.com/a/b/Some.Project.git", "some-project"),
        ("git@github.com:org/blog.git", "blog"),
        ("file:///srv/git/demo-site", "demo-site"),
    ],
)
def test_service_from_repo_url_normalises_the_last_segment(url: str, expected: str) -> None:
    assert service_from_repo_url(url) == expected


def test_service_from_repo_url_caps_length_at_63() -> None:
    name = service_from_repo_url("https://h/org/" + "a" * 100 + ".git")

    assert name == "a" * 63


@pytest.mark.parametrize("url", ["https://h/org/___.git", "https://h/", "https://h/org/.git"])
def test_service_from_repo_url_refuses_when_nothing_valid_is_left(url: str) -> None:
    with pytest.raises(ValidationError, match="cannot derive a service name"):
        service_from_repo_url(url)


@given(st.text(max_size=200))
@hsettings(database=None, deadline=None)
def test_service_from_repo_url_returns_a_valid_name_or_refuses(url: str) -> None:
    try:
        name = service_from_repo_url(url)
    except (ValidationError, ValueError):
        return
    assert NAME_RE.fullmatch(name)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("site", "site"), ("./a//b/", "a/b"), ("a/./b", "a/b"), (".", ""), ("", "")],
)
def test_validate_relative_dir_normalises(value: str, expected: str) -> None:
    assert validate_relative_dir(value) == expected


@pytest.mark.parametrize(
    "value",
    ["..", "../x", "a/../../b", "a/..", "/etc", "/", "a\\b", "..\\x", "a\x00b", "a\nb", "x" * 256],
)
def test_validate_relative_dir_refuses_escapes_absolute_and_odd_characters(value: str) -> None:
    with pytest.raises(ValidationError, match="root_dir"):
        validate_relative_dir(value)


@given(st.text(alphabet="ab./\\\x00", max_size=30))
@hsettings(database=None, deadline=None)
def test_validate_relative_dir_never_returns_an_escaping_path(value: str) -> None:
    try:
        out = validate_relative_dir(value)
    except ValidationError:
        return
    assert not out.startswith("/")
    assert ".." not in out.split("/")
    assert "\\" not in out
    assert "\x00" not in out
