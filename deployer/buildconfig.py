"""Which build to run: the request's, ``buildq.toml``, ``package.json``, MkDocs, or none."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deployer.frameworks import (
    MKDOCS_CONFIGS,
    NODE_MARKERS,
    NODE_OUTPUTS,
    PIP_ENV,
    mkdocs_command,
    mkdocs_site_dir,
    node_build,
)
from shared.core.buildenv import validate_build_env
from shared.core.errors import ValidationError
from shared.core.names import validate_relative_dir

__all__ = ["NODE_OUTPUTS", "BuildConfig", "detect", "resolve_output"]

MAX_CONFIG_BYTES = 256 * 1024
MAX_COMMAND_CHARS = 4096


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """A resolved build: ``command`` (None: publish as is) and where output lands.

    ``detected`` says in words what was recognised (for the build log); ``spa`` is
    ``[serve] spa`` from buildq.toml, None when the repository does not say.
    """

    origin: str
    """Where the configuration came from: request, buildq.toml, package.json, …"""
    command: str | None
    outputs: tuple[str, ...] = (".",)
    env: Mapping[str, str] = field(default_factory=dict)
    detected: str = ""
    spa: bool | None = None


def _env(raw: Any, where: str) -> dict[str, str]:
    """``[build.env]`` (or the request's ``env``) as strings, checked by
    :func:`shared.core.buildenv.validate_build_env`: loader variables fail the job."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where}: build env must be a table of strings")
    env: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str | int | float | bool):
            raise ValidationError(f"{where}: environment value for {key} must be a string")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return validate_build_env(env, where)


def _from_table(table: Mapping[str, Any], where: str) -> BuildConfig:
    unknown = set(table) - {"command", "output", "env"}
    if unknown:
        raise ValidationError(f"{where}: unknown build key(s) {sorted(unknown)}")
    command = table.get("command")
    if command is not None and (
        not isinstance(command, str) or not command.strip() or len(command) > MAX_COMMAND_CHARS
    ):
        raise ValidationError(f"{where}: build command must be a non-empty string")
    output = table.get("output", ".")
    if not isinstance(output, str):
        raise ValidationError(f"{where}: build output must be a string")
    output = validate_relative_dir(output, "build output") or "."
    env = _env(table.get("env"), where)
    detected = "request build" if where == "request" else where
    return BuildConfig(where, command, (output,), env, detected=detected)


def _serve(raw: Any) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValidationError("buildq.toml: [serve] must be a table")
    unknown = set(raw) - {"spa"}
    if unknown:
        raise ValidationError(f"buildq.toml: unknown serve key(s) {sorted(unknown)}")
    spa = raw.get("spa")
    if spa is not None and not isinstance(spa, bool):
        raise ValidationError("buildq.toml: [serve] spa must be true or false")
    return spa


def _read_small(path: Path) -> str:
    if path.is_symlink() or not path.is_file():
        raise ValidationError(f"{path.name} must be a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValidationError(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
    return path.read_text("utf-8")


def _is_regular(path: Path) -> bool:
    # A symlinked marker file counts as absent: it must not steer the build.
    return path.is_file() and not path.is_symlink()


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _from_toml(path: Path) -> tuple[BuildConfig | None, bool | None]:
    try:
        data = tomllib.loads(_read_small(path))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"buildq.toml is not valid TOML: {exc}") from exc
    spa = _serve(data.get("serve"))
    if "build" not in data and "serve" in data:
        return None, spa  # only [serve]: detect the build from the repository
    build = data.get("build", {})
    if not isinstance(build, dict):
        raise ValidationError("buildq.toml: [build] must be a table")
    return _from_table(build, "buildq.toml"), spa


def _from_package_json(checkout: Path) -> BuildConfig | None:
    try:
        pkg = json.loads(_read_small(checkout / "package.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"package.json is not valid JSON: {exc}") from exc
    if not isinstance(pkg, dict):
        return None
    present = {name for name in NODE_MARKERS if _is_regular(checkout / name)}
    node = node_build(pkg, present)
    if node is None:
        return None
    return BuildConfig("package.json", node.command, node.outputs, node.env, node.detected)


def _from_mkdocs(checkout: Path, name: str) -> BuildConfig:
    try:
        site_dir = mkdocs_site_dir(_read_small(checkout / name))
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{name} is not valid UTF-8: {exc}") from exc
    output = validate_relative_dir(site_dir, "mkdocs site_dir") if site_dir else "site"
    if not output:
        raise ValidationError("invalid mkdocs site_dir: must be a directory below the checkout")
    command = mkdocs_command(name, _is_regular(checkout / "requirements.txt"))
    return BuildConfig(name, command, (output,), dict(PIP_ENV), "MkDocs")


def detect(checkout: Path, requested: Mapping[str, Any] | None = None) -> BuildConfig:
    """Resolve the build for ``checkout``: first match wins (see the design's Build)."""
    if requested:
        return _from_table(requested, "request")
    spa = None
    toml_path = checkout / "buildq.toml"
    if _exists(toml_path):
        config, spa = _from_toml(toml_path)
        if config is not None:
            return replace(config, spa=spa)
    config = _from_package_json(checkout) if _exists(checkout / "package.json") else None
    if config is None:
        mkdocs = next((n for n in MKDOCS_CONFIGS if _exists(checkout / n)), None)
        config = _from_mkdocs(checkout, mkdocs) if mkdocs else None
    if config is None:
        config = BuildConfig("static", None, (".",), detected="static files")
    return replace(config, spa=spa)


def resolve_output(checkout: Path, config: BuildConfig) -> Path:
    """The output directory after the build ran; ValidationError if it is missing."""
    root = checkout.resolve()
    for candidate in config.outputs:
        path = (checkout / candidate).resolve()
        if not path.is_relative_to(root):
            raise ValidationError(f"build output {candidate!r} is outside the checkout")
        if path.is_dir() and not (checkout / candidate).is_symlink():
            return path
    raise ValidationError(
        f"build produced no output directory (looked for {', '.join(config.outputs)})"
    )
