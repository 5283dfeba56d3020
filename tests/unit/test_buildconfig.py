"""deployer/buildconfig.py: which build runs, and where its output is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.buildconfig import NODE_OUTPUTS, BuildConfig, detect, resolve_output
from shared.errors import ValidationError

TOML = """\
[build]
command = "python3 build.py"
output = "dist"

[build.env]
SITE_TITLE = "hello"
DEBUG = true
WORKERS = 4
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def package_json(scripts: dict[str, str]) -> str:
    return json.dumps({"name": "x", "scripts": scripts})


# --- detect ---------------------------------------------------------------


def test_request_build_wins_over_repository_files(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)
    write(tmp_path / "package.json", package_json({"build": "vite build"}))

    config = detect(tmp_path, {"command": "make site", "output": "./_site/", "env": {"A": "1"}})

    assert config == BuildConfig("request", "make site", ("_site",), {"A": "1"})


def test_buildq_toml_gives_command_output_and_env(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)
    write(tmp_path / "package.json", package_json({"build": "vite build"}))

    config = detect(tmp_path)

    assert config.source == "buildq.toml"
    assert config.command == "python3 build.py"
    assert config.outputs == ("dist",)
    assert dict(config.env) == {"SITE_TITLE": "hello", "DEBUG": "true", "WORKERS": "4"}


def test_buildq_toml_without_output_publishes_the_checkout(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", '[build]\ncommand = "make"\n')

    config = detect(tmp_path)

    assert config.outputs == (".",)
    assert dict(config.env) == {}


def test_buildq_toml_without_a_build_table_means_no_command(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "# nothing yet\n")

    assert detect(tmp_path) == BuildConfig("buildq.toml", None, (".",), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[build\ncommand = 1", "not valid TOML"),
        ('build = "make"', r"\[build\] must be a table"),
        ('[build]\ncommand = "make"\nouptut = "dist"', "unknown build key"),
        ("[build]\ncommand = 42", "non-empty string"),
        ('[build]\ncommand = "   "', "non-empty string"),
        ("[build]\noutput = 3", "output must be a string"),
        ('[build]\noutput = "../outside"', "build output"),
        ('[build]\noutput = "dist/../../x"', "build output"),
        ('[build]\noutput = "/abs"', "build output"),
        ('[build]\nenv = "A=1"', "env must be a table"),
        ('[build.env]\n"1BAD" = "x"', "invalid environment variable name"),
        ('[build.env]\n"A-B" = "x"', "invalid environment variable name"),
        ('[build.env]\n"A B" = "x"', "invalid environment variable name"),
        ("[build.env]\nA = [1, 2]", "must be a string"),
    ],
)
def test_invalid_buildq_toml_is_a_validation_error(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "buildq.toml", text)

    with pytest.raises(ValidationError, match=message):
        detect(tmp_path)


def test_buildq_toml_that_is_not_utf8_is_a_validation_error(tmp_path: Path) -> None:
    (tmp_path / "buildq.toml").write_bytes(b"[build]\ncommand = '\xff\xfe'\n")

    with pytest.raises(ValidationError, match="not valid TOML"):
        detect(tmp_path)


def test_symlinked_buildq_toml_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path / "elsewhere.toml", TOML)
    (tmp_path / "buildq.toml").symlink_to(real)

    with pytest.raises(ValidationError, match="regular file"):
        detect(tmp_path)


def test_dangling_buildq_toml_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "buildq.toml").symlink_to("/nonexistent/buildq.toml")

    with pytest.raises(ValidationError, match="regular file"):
        detect(tmp_path)


def test_oversized_buildq_toml_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "#" * (256 * 1024 + 1))

    with pytest.raises(ValidationError, match="larger than"):
        detect(tmp_path)


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"command": "make", "shell": "bash"}, "unknown build key"),
        ({"output": ".."}, "build output"),
        ({"command": "x" * 5000}, "non-empty string"),
        ({"env": {"BAD NAME": "1"}}, "invalid environment variable name"),
        ({"env": {"A": "x\x00y"}}, "must be a string"),
    ],
)
def test_invalid_request_build_is_a_validation_error(
    tmp_path: Path, requested: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        detect(tmp_path, requested)


def test_package_json_with_build_script_uses_npm_install(tmp_path: Path) -> None:
    write(tmp_path / "package.json", package_json({"build": "vite build"}))

    config = detect(tmp_path)

    assert config.source == "package.json"
    assert config.command == "npm install && npm run build"
    assert config.outputs == NODE_OUTPUTS == ("dist", "build", "out", "public")


def test_package_json_with_lockfile_uses_npm_ci(tmp_path: Path) -> None:
    write(tmp_path / "package.json", package_json({"build": "vite build"}))
    write(tmp_path / "package-lock.json", "{}")

    assert detect(tmp_path).command == "npm ci && npm run build"


@pytest.mark.parametrize(
    "text",
    [
        package_json({"test": "jest"}),
        json.dumps({"name": "x"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"scripts": {"build": 1}}),
    ],
)
def test_package_json_without_a_build_script_is_a_static_site(tmp_path: Path, text: str) -> None:
    write(tmp_path / "package.json", text)

    assert detect(tmp_path) == BuildConfig("static", None, (".",), {})


def test_invalid_package_json_is_a_validation_error(tmp_path: Path) -> None:
    write(tmp_path / "package.json", "{not json")

    with pytest.raises(ValidationError, match="not valid JSON"):
        detect(tmp_path)


def test_no_configuration_is_a_static_site(tmp_path: Path) -> None:
    write(tmp_path / "index.html", "<h1>hi</h1>")

    config = detect(tmp_path)

    assert config.source == "static"
    assert config.command is None
    assert config.outputs == (".",)


def test_empty_request_build_falls_through_to_the_repository(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)

    assert detect(tmp_path, {}).source == "buildq.toml"


# --- resolve_output -------------------------------------------------------


def test_resolve_output_picks_the_first_existing_candidate(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "public").mkdir()
    config = BuildConfig("package.json", "npm run build", NODE_OUTPUTS)

    assert resolve_output(tmp_path, config) == (tmp_path / "build").resolve()


def test_resolve_output_of_a_static_site_is_the_checkout(tmp_path: Path) -> None:
    assert resolve_output(tmp_path, BuildConfig("static", None)) == tmp_path.resolve()


def test_resolve_output_fails_when_no_candidate_exists(tmp_path: Path) -> None:
    write(tmp_path / "dist", "a file, not a directory")

    with pytest.raises(ValidationError, match="no output directory"):
        resolve_output(tmp_path, BuildConfig("buildq.toml", "make", ("dist",)))


def test_resolve_output_refuses_a_symlinked_output_directory(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "real").mkdir(parents=True)
    (checkout / "dist").symlink_to(checkout / "real")

    with pytest.raises(ValidationError, match="no output directory"):
        resolve_output(checkout, BuildConfig("buildq.toml", "make", ("dist",)))


def test_resolve_output_refuses_a_symlink_escaping_the_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "secrets").mkdir()
    (checkout / "dist").symlink_to(tmp_path / "secrets")

    with pytest.raises(ValidationError, match="outside the checkout"):
        resolve_output(checkout, BuildConfig("buildq.toml", "make", ("dist",)))


def test_resolve_output_refuses_a_dotdot_output(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()

    with pytest.raises(ValidationError, match="outside the checkout"):
        resolve_output(checkout, BuildConfig("request", "make", ("..",)))


def test_symlinked_package_json_is_refused_not_treated_as_static(tmp_path: Path) -> None:
    real = tmp_path.parent / f"{tmp_path.name}-package.json"
    real.write_text(json.dumps({"scripts": {"build": "vite build"}}))
    (tmp_path / "package.json").symlink_to(real)
    with pytest.raises(ValidationError, match=r"package\.json must be a regular file"):
        detect(tmp_path)
