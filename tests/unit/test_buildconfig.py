"""deployer/buildconfig.py: which build runs, and where its output is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.buildconfig import NODE_OUTPUTS, BuildConfig, detect, resolve_output
from deployer.frameworks import COREPACK_ENV
from shared.core.errors import ValidationError

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

    assert config == BuildConfig(
        "request", "make site", ("_site",), {"A": "1"}, detected="request build"
    )


def test_buildq_toml_gives_command_output_and_env(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)
    write(tmp_path / "package.json", package_json({"build": "vite build"}))

    config = detect(tmp_path)

    assert config.origin == "buildq.toml"
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

    assert detect(tmp_path) == BuildConfig("buildq.toml", None, (".",), {}, detected="buildq.toml")


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
        ('[build.env]\nLD_PRELOAD = "/w/other-job/src/x.so"', "LD_PRELOAD is a loader"),
        ('[build.env]\nGCONV_PATH = "/w/x"', "GCONV_PATH is a loader"),
        ('[build.env]\nBUILDQ_JOB_ID = "x"', "BUILDQ_JOB_ID is reserved"),
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

    assert config.origin == "package.json"
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

    assert detect(tmp_path) == BuildConfig("static", None, (".",), {}, detected="static files")


def test_invalid_package_json_is_a_validation_error(tmp_path: Path) -> None:
    write(tmp_path / "package.json", "{not json")

    with pytest.raises(ValidationError, match="not valid JSON"):
        detect(tmp_path)


def test_no_configuration_is_a_static_site(tmp_path: Path) -> None:
    write(tmp_path / "index.html", "<h1>hi</h1>")

    config = detect(tmp_path)

    assert config.origin == "static"
    assert config.command is None
    assert config.outputs == (".",)


def test_empty_request_build_falls_through_to_the_repository(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)

    assert detect(tmp_path, {}).origin == "buildq.toml"


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


# --- package managers -----------------------------------------------------

PNPM_CMD = "corepack pnpm install --frozen-lockfile && corepack pnpm run build"
YARN1_CMD = "corepack yarn install --frozen-lockfile && corepack yarn run build"
BERRY_CMD = "corepack yarn install --immutable && corepack yarn run build"


def node_project(root: Path, **fields: object) -> Path:
    data = {"name": "x", "scripts": {"build": "node build.js"}, **fields}
    return write(root / "package.json", json.dumps(data))


@pytest.mark.parametrize(
    ("lockfile", "command"),
    [
        ("package-lock.json", "npm ci && npm run build"),
        ("npm-shrinkwrap.json", "npm ci && npm run build"),
        ("pnpm-lock.yaml", PNPM_CMD),
        ("yarn.lock", YARN1_CMD),
    ],
)
def test_each_lockfile_picks_its_package_manager_command(
    tmp_path: Path, lockfile: str, command: str
) -> None:
    node_project(tmp_path)
    write(tmp_path / lockfile, "")

    assert detect(tmp_path).command == command


def test_yarn_lock_with_yarnrc_yml_is_yarn_berry_and_immutable(tmp_path: Path) -> None:
    node_project(tmp_path)
    write(tmp_path / "yarn.lock", "")
    write(tmp_path / ".yarnrc.yml", "nodeLinker: node-modules\n")

    assert detect(tmp_path).command == BERRY_CMD


@pytest.mark.parametrize(
    ("field", "command"),
    [
        ("pnpm@9.1.0", "corepack pnpm install --no-frozen-lockfile && corepack pnpm run build"),
        ("yarn@4.1.0", "corepack yarn install --no-immutable && corepack yarn run build"),
        ("yarn@1.22.22", "corepack yarn install && corepack yarn run build"),
        ("npm@10.8.0", "npm install && npm run build"),
    ],
)
def test_package_manager_field_without_a_lockfile_picks_the_manager(
    tmp_path: Path, field: str, command: str
) -> None:
    node_project(tmp_path, packageManager=field)

    assert detect(tmp_path).command == command


def test_package_manager_field_wins_over_a_lockfile(tmp_path: Path) -> None:
    node_project(tmp_path, packageManager="pnpm@9.1.0+sha512.abc")
    write(tmp_path / "pnpm-lock.yaml", "")
    write(tmp_path / "package-lock.json", "{}")

    assert detect(tmp_path).command == PNPM_CMD


def test_yarn_4_package_manager_field_is_berry_without_yarnrc(tmp_path: Path) -> None:
    node_project(tmp_path, packageManager="yarn@4.1.0")
    write(tmp_path / "yarn.lock", "")

    assert detect(tmp_path).command == BERRY_CMD


def test_yarn_1_package_manager_field_is_classic_despite_yarnrc(tmp_path: Path) -> None:
    node_project(tmp_path, packageManager="yarn@1.22.22")
    write(tmp_path / "yarn.lock", "")
    write(tmp_path / ".yarnrc.yml", "")

    assert detect(tmp_path).command == YARN1_CMD


@pytest.mark.parametrize("field", ["bun@1.1.0", "pnpm", "yarn@latest", 42, ["pnpm@9"]])
def test_unrecognised_package_manager_field_falls_back_to_lockfiles(
    tmp_path: Path, field: object
) -> None:
    node_project(tmp_path, packageManager=field)
    write(tmp_path / "yarn.lock", "")

    assert detect(tmp_path).command == YARN1_CMD


def test_pnpm_lockfile_beats_a_stray_package_lock(tmp_path: Path) -> None:
    node_project(tmp_path)
    write(tmp_path / "pnpm-lock.yaml", "")
    write(tmp_path / "package-lock.json", "{}")

    assert detect(tmp_path).command == PNPM_CMD


def test_corepack_builds_carry_non_interactive_corepack_env(tmp_path: Path) -> None:
    node_project(tmp_path)
    write(tmp_path / "pnpm-lock.yaml", "")

    env = dict(detect(tmp_path).env)

    assert env["COREPACK_ENABLE_DOWNLOAD_PROMPT"] == "0"
    assert env == COREPACK_ENV


def test_npm_builds_carry_no_extra_env(tmp_path: Path) -> None:
    node_project(tmp_path)

    assert dict(detect(tmp_path).env) == {}


def test_symlinked_lockfile_is_ignored(tmp_path: Path) -> None:
    node_project(tmp_path)
    real = write(tmp_path / "elsewhere" / "pnpm-lock.yaml", "")
    (tmp_path / "pnpm-lock.yaml").symlink_to(real)

    assert detect(tmp_path).command == "npm install && npm run build"


def test_lockfile_that_is_a_directory_is_ignored(tmp_path: Path) -> None:
    node_project(tmp_path)
    (tmp_path / "yarn.lock").mkdir()

    assert detect(tmp_path).command == "npm install && npm run build"


# --- frameworks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("dependency", "label", "first"),
    [
        ("vite", "Vite", "dist"),
        ("astro", "Astro", "dist"),
        ("next", "Next.js", "out"),
        ("@sveltejs/kit", "SvelteKit", "build"),
        ("@docusaurus/core", "Docusaurus", "build"),
        ("react-scripts", "Create React App", "build"),
        ("gatsby", "Gatsby", "public"),
        ("@vue/cli-service", "Vue CLI", "dist"),
        ("nuxt", "Nuxt", ".output/public"),
    ],
)
def test_framework_output_directory_comes_first(
    tmp_path: Path, dependency: str, label: str, first: str
) -> None:
    node_project(tmp_path, dependencies={dependency: "^1.0.0"})

    config = detect(tmp_path)

    assert config.outputs == (first, *(o for o in NODE_OUTPUTS if o != first))
    assert config.detected == f"{label} (npm)"


def test_framework_is_found_in_dev_dependencies(tmp_path: Path) -> None:
    node_project(tmp_path, devDependencies={"next": "14.2.0"})
    write(tmp_path / "pnpm-lock.yaml", "")

    config = detect(tmp_path)

    assert config.detected == "Next.js (pnpm)"
    assert config.outputs == ("out", "dist", "build", "public")


def test_sveltekit_wins_over_the_vite_it_is_built_on(tmp_path: Path) -> None:
    node_project(
        tmp_path,
        devDependencies={"vite": "^5", "@sveltejs/kit": "^2", "@sveltejs/adapter-static": "^3"},
    )

    assert detect(tmp_path).detected == "SvelteKit (npm)"


def test_unknown_framework_keeps_the_default_outputs(tmp_path: Path) -> None:
    node_project(tmp_path, dependencies={"left-pad": "1.0.0"})
    write(tmp_path / "yarn.lock", "")

    config = detect(tmp_path)

    assert config.outputs == NODE_OUTPUTS
    assert config.detected == "package.json build script (yarn)"


@pytest.mark.parametrize("deps", [["vite"], "vite", 1, None, {"1": 2}])
def test_dependencies_that_are_not_a_table_are_ignored(tmp_path: Path, deps: object) -> None:
    node_project(tmp_path, dependencies=deps, devDependencies=deps)

    config = detect(tmp_path)

    assert config.outputs == NODE_OUTPUTS
    assert config.detected == "package.json build script (npm)"


@pytest.mark.parametrize("scripts", [["build"], "node build.js", {"build": None}])
def test_scripts_that_are_not_a_table_of_strings_mean_static(
    tmp_path: Path, scripts: object
) -> None:
    write(
        tmp_path / "package.json", json.dumps({"scripts": scripts, "dependencies": {"vite": "5"}})
    )

    assert detect(tmp_path).origin == "static"


def test_oversized_package_json_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "package.json", json.dumps({"pad": "x" * (256 * 1024)}))

    with pytest.raises(ValidationError, match="larger than"):
        detect(tmp_path)


# --- MkDocs ---------------------------------------------------------------

MKDOCS_VENV_CMD = "python3 -m venv .buildq-venv && .buildq-venv/bin/pip install"


def test_mkdocs_yml_installs_mkdocs_and_builds_into_site(tmp_path: Path) -> None:
    write(tmp_path / "mkdocs.yml", "site_name: Docs\n")

    config = detect(tmp_path)

    assert config.command == (
        f"{MKDOCS_VENV_CMD} mkdocs && .buildq-venv/bin/mkdocs build --config-file mkdocs.yml"
    )
    assert config.outputs == ("site",)
    assert config.detected == "MkDocs"
    assert config.origin == "mkdocs.yml"


def test_mkdocs_installs_requirements_txt_when_present(tmp_path: Path) -> None:
    write(tmp_path / "mkdocs.yml", "site_name: Docs\n")
    write(tmp_path / "requirements.txt", "mkdocs-material\n")

    assert detect(tmp_path).command == (
        f"{MKDOCS_VENV_CMD} -r requirements.txt && "
        ".buildq-venv/bin/mkdocs build --config-file mkdocs.yml"
    )


def test_mkdocs_yaml_spelling_is_detected_and_passed_to_mkdocs(tmp_path: Path) -> None:
    write(tmp_path / "mkdocs.yaml", "site_name: Docs\n")

    config = detect(tmp_path)

    assert config.command is not None
    assert config.command.endswith("mkdocs build --config-file mkdocs.yaml")


@pytest.mark.parametrize(
    ("line", "output"),
    [
        ("site_dir: public", "public"),
        ("site_dir: 'out/docs/'  # published", "out/docs"),
        ('site_dir: "html"', "html"),
    ],
)
def test_mkdocs_top_level_site_dir_sets_the_output(tmp_path: Path, line: str, output: str) -> None:
    write(tmp_path / "mkdocs.yml", f"site_name: Docs\n{line}\nnav:\n  - index.md\n")

    assert detect(tmp_path).outputs == (output,)


def test_mkdocs_nested_site_dir_is_not_the_top_level_one(tmp_path: Path) -> None:
    write(tmp_path / "mkdocs.yml", "site_name: Docs\nextra:\n  site_dir: elsewhere\n")

    assert detect(tmp_path).outputs == ("site",)


@pytest.mark.parametrize("value", ["../../etc", "/etc", "docs/../../x", ".", "a\\b"])
def test_mkdocs_site_dir_outside_the_checkout_is_refused(tmp_path: Path, value: str) -> None:
    write(tmp_path / "mkdocs.yml", f"site_name: Docs\nsite_dir: {value}\n")

    with pytest.raises(ValidationError, match="site_dir"):
        detect(tmp_path)


def test_symlinked_mkdocs_yml_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path / "elsewhere" / "mkdocs.yml", "site_name: Docs\n")
    (tmp_path / "mkdocs.yml").symlink_to(real)

    with pytest.raises(ValidationError, match=r"mkdocs\.yml must be a regular file"):
        detect(tmp_path)


def test_oversized_mkdocs_yml_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "mkdocs.yml", "#" * (256 * 1024 + 1))

    with pytest.raises(ValidationError, match="larger than"):
        detect(tmp_path)


def test_mkdocs_yml_that_is_not_utf8_is_a_validation_error(tmp_path: Path) -> None:
    (tmp_path / "mkdocs.yml").write_bytes(b"site_name: \xff\n")

    with pytest.raises(ValidationError, match="not valid UTF-8"):
        detect(tmp_path)


def test_package_json_build_wins_over_mkdocs(tmp_path: Path) -> None:
    node_project(tmp_path)
    write(tmp_path / "mkdocs.yml", "site_name: Docs\n")

    assert detect(tmp_path).origin == "package.json"


def test_mkdocs_applies_when_package_json_has_no_build_script(tmp_path: Path) -> None:
    write(tmp_path / "package.json", package_json({"lint": "eslint ."}))
    write(tmp_path / "mkdocs.yml", "site_name: Docs\n")

    assert detect(tmp_path).detected == "MkDocs"


def test_buildq_toml_build_wins_over_mkdocs(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)
    write(tmp_path / "mkdocs.yml", "site_name: Docs\n")

    assert detect(tmp_path).origin == "buildq.toml"


# --- detected and [serve] -------------------------------------------------


def test_buildq_toml_build_is_detected_as_buildq_toml(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)

    assert detect(tmp_path).detected == "buildq.toml"


def test_request_build_is_detected_as_a_request_build(tmp_path: Path) -> None:
    assert detect(tmp_path, {"command": "make"}).detected == "request build"


def test_no_configuration_is_detected_as_static_files(tmp_path: Path) -> None:
    assert detect(tmp_path).detected == "static files"


def test_existing_constructions_default_detected_and_spa() -> None:
    config = BuildConfig("static", None)

    assert (config.detected, config.spa) == ("", None)


@pytest.mark.parametrize("value", [True, False])
def test_serve_spa_is_read_from_buildq_toml(tmp_path: Path, value: bool) -> None:
    write(tmp_path / "buildq.toml", f"{TOML}\n[serve]\nspa = {str(value).lower()}\n")

    config = detect(tmp_path)

    assert config.spa is value
    assert config.command == "python3 build.py"


def test_spa_is_none_when_buildq_toml_does_not_say(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", TOML)

    assert detect(tmp_path).spa is None


def test_empty_serve_table_leaves_spa_unsaid(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "[serve]\n")

    assert detect(tmp_path).spa is None


def test_serve_without_build_still_detects_package_json(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "[serve]\nspa = true\n")
    node_project(tmp_path, devDependencies={"vite": "^5"})
    write(tmp_path / "pnpm-lock.yaml", "")

    config = detect(tmp_path)

    assert config.origin == "package.json"
    assert config.detected == "Vite (pnpm)"
    assert config.command == PNPM_CMD
    assert config.spa is True


def test_serve_without_build_on_a_static_repository(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "[serve]\nspa = false\n")

    assert detect(tmp_path) == BuildConfig(
        "static", None, (".",), {}, detected="static files", spa=False
    )


def test_serve_without_build_still_detects_mkdocs(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "[serve]\nspa = false\n")
    write(tmp_path / "mkdocs.yml", "site_name: Docs\n")

    config = detect(tmp_path)

    assert (config.detected, config.spa) == ("MkDocs", False)


def test_request_build_never_sets_spa(tmp_path: Path) -> None:
    write(tmp_path / "buildq.toml", "[serve]\nspa = true\n")

    assert detect(tmp_path, {"command": "make"}).spa is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve]\nspa = true\nfallback = '200.html'", r"unknown serve key\(s\) \['fallback'\]"),
        ('[serve]\nspa = "yes"', r"\[serve\] spa must be true or false"),
        ("[serve]\nspa = 1", r"\[serve\] spa must be true or false"),
        ("serve = true", r"\[serve\] must be a table"),
        ('serve = true\n[build]\ncommand = "make"', r"\[serve\] must be a table"),
        ('build = "make"\n[serve]\nspa = true', r"\[build\] must be a table"),
    ],
)
def test_invalid_serve_table_is_a_validation_error(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "buildq.toml", text)

    with pytest.raises(ValidationError, match=message):
        detect(tmp_path)
