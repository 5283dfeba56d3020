"""Which build to run: the request's, ``buildq.toml``, ``package.json``, or none."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ValidationError
from shared.names import validate_relative_dir

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
NODE_OUTPUTS = ("dist", "build", "out", "public")
MAX_CONFIG_BYTES = 256 * 1024
MAX_COMMAND_CHARS = 4096


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """A resolved build: ``command`` (None: publish as is) and where output lands."""

    source: str
    command: str | None
    outputs: tuple[str, ...] = (".",)
    env: Mapping[str, str] = field(default_factory=dict)


def _env(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where}: build env must be a table of strings")
    env: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise ValidationError(f"{where}: invalid environment variable name {key!r}")
        if not isinstance(value, str | int | float | bool) or "\x00" in str(value):
            raise ValidationError(f"{where}: environment value for {key} must be a string")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


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
    return BuildConfig(where, command, (output,), _env(table.get("env"), where))


def _read_small(path: Path) -> str:
    if path.is_symlink() or not path.is_file():
        raise ValidationError(f"{path.name} must be a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValidationError(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
    return path.read_text("utf-8")


def detect(checkout: Path, requested: Mapping[str, Any] | None = None) -> BuildConfig:
    """Resolve the build for ``checkout``: first match wins (see the design's Build)."""
    if requested:
        return _from_table(requested, "request")
    toml_path = checkout / "buildq.toml"
    if toml_path.exists() or toml_path.is_symlink():
        try:
            data = tomllib.loads(_read_small(toml_path))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError(f"buildq.toml is not valid TOML: {exc}") from exc
        build = data.get("build", {})
        if not isinstance(build, dict):
            raise ValidationError("buildq.toml: [build] must be a table")
        return _from_table(build, "buildq.toml")
    pkg_path = checkout / "package.json"
    if pkg_path.exists() or pkg_path.is_symlink():
        try:
            pkg = json.loads(_read_small(pkg_path))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError(f"package.json is not valid JSON: {exc}") from exc
        scripts = pkg.get("scripts") if isinstance(pkg, dict) else None
        if isinstance(scripts, dict) and isinstance(scripts.get("build"), str):
            install = "npm ci" if (checkout / "package-lock.json").is_file() else "npm install"
            return BuildConfig("package.json", f"{install} && npm run build", NODE_OUTPUTS)
    return BuildConfig("static", None, (".",))


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
