"""``buildq services`` / ``buildq service set|show``: the PUT body and what is printed."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from shared.cli.main import main
from shared.cli.services import merged_body, service_listings, services_listing

RECORD = {
    "name": "web",
    "repo_url": "https://github.com/acme/web.git",
    "production_branch": "release",
    "build": {"command": "make", "output": "dist", "root_dir": None},
    "preview_branches": ["feature/*"],
    "webhook_secret_set": True,
    "url": "http://web.localhost:8001/",
    "updated_at": 1_700_000_000_000,
    "updated_by": "ada",
    "live": {"id": "a" * 20},
    "deployments": [
        {"id": "a" * 20, "status": "live", "ref": "b" * 40, "commit": "b" * 40, "created_at": 1}
    ],
}


def test_set_keeps_what_is_not_given() -> None:
    body = merged_body(RECORD, {"output": "public", "previews": ()})

    assert body == {
        "repo_url": RECORD["repo_url"],
        "production_branch": "release",
        "build": {"command": "make", "output": "public"},
        "preview_branches": ["feature/*"],
    }


def test_a_new_service_needs_a_repository() -> None:
    with pytest.raises(click.UsageError, match="--repo"):
        merged_body({}, {"production_branch": "main"})


def test_listings_show_the_record_and_never_a_secret() -> None:
    rows = services_listing([RECORD]).plain_lines()
    fields, history = service_listings(RECORD)

    assert rows == [
        "web\thttps://github.com/acme/web.git\trelease\tfeature/*\tyes\thttp://web.localhost:8001/"
    ]
    assert ("live", "a" * 20) in fields.rows
    [line] = history.plain_lines()
    assert line.startswith(f"deployment\t{'a' * 20}\tlive\t{'b' * 40}\t{'b' * 12}\t")


def test_the_commands_are_registered() -> None:
    result = CliRunner().invoke(main, ["service", "--help"])

    assert result.exit_code == 0
    assert "set" in result.output
    assert "show" in result.output
    assert "services" in CliRunner().invoke(main, ["--help"]).output
