"""Node package managers and site frameworks, decided from plain data (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

NODE_OUTPUTS = ("dist", "build", "out", "public")
# Names buildconfig checks for (as regular files) and passes in as ``present``.
NODE_MARKERS = (
    "pnpm-lock.yaml",
    "yarn.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    ".yarnrc.yml",
)
# A deliberate pnpm or yarn lockfile beats a stray package-lock.json beside it.
LOCKFILES = (
    ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"),
    ("package-lock.json", "npm"),
    ("npm-shrinkwrap.json", "npm"),
)
PACKAGE_MANAGER_RE = re.compile(r"^(npm|pnpm|yarn)@(\d+)(?:[.+\-].*)?$")
# Corepack must never wait on a prompt, never pin or rewrite package.json, and
# without a pinned version takes the release it vets (a known hash), not today's latest.
COREPACK_ENV = {
    "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0",
    "COREPACK_ENABLE_STRICT": "0",
    "COREPACK_ENABLE_AUTO_PIN": "0",
    "COREPACK_DEFAULT_TO_LATEST": "0",
}

# First match wins: meta-frameworks before the bundler they are built on
# (a SvelteKit or Astro project also lists vite).
FRAMEWORKS = (
    ("next", "Next.js", "out"),
    ("nuxt", "Nuxt", ".output/public"),
    ("@sveltejs/kit", "SvelteKit", "build"),
    ("astro", "Astro", "dist"),
    ("gatsby", "Gatsby", "public"),
    ("@docusaurus/core", "Docusaurus", "build"),
    ("react-scripts", "Create React App", "build"),
    ("@vue/cli-service", "Vue CLI", "dist"),
    ("vite", "Vite", "dist"),
)


@dataclass(frozen=True, slots=True)
class NodeBuild:
    """How to install and build a package.json project, and what was recognised."""

    manager: str
    command: str
    outputs: tuple[str, ...]
    detected: str
    env: Mapping[str, str]


def _declared_manager(package: Mapping[str, Any]) -> tuple[str, int] | None:
    field = package.get("packageManager")
    match = PACKAGE_MANAGER_RE.match(field) if isinstance(field, str) else None
    return (match.group(1), int(match.group(2))) if match else None


def install_command(package: Mapping[str, Any], present: Collection[str]) -> tuple[str, str]:
    """The package manager's name and its install-then-build command line."""
    declared = _declared_manager(package)
    lockfile = next((name for name, _ in LOCKFILES if name in present), None)
    manager = declared[0] if declared else dict(LOCKFILES).get(lockfile or "", "npm")
    if manager == "pnpm":
        # CI=true makes pnpm and Yarn Berry refuse to create a missing lockfile.
        frozen = "--frozen-lockfile" if "pnpm-lock.yaml" in present else "--no-frozen-lockfile"
        return manager, f"corepack pnpm install {frozen} && corepack pnpm run build"
    if manager == "yarn":
        berry = declared[1] >= 2 if declared else ".yarnrc.yml" in present
        locked = "yarn.lock" in present
        if berry:
            frozen = "--immutable" if locked else "--no-immutable"
        else:
            frozen = "--frozen-lockfile" if locked else ""
        install = f"corepack yarn install {frozen}".rstrip()
        return manager, f"{install} && corepack yarn run build"
    npm_locked = "package-lock.json" in present or "npm-shrinkwrap.json" in present
    return "npm", f"{'npm ci' if npm_locked else 'npm install'} && npm run build"


def dependencies(package: Mapping[str, Any]) -> frozenset[str]:
    """Names in ``dependencies`` and ``devDependencies``; malformed sections count as empty."""
    names: set[str] = set()
    for section in ("dependencies", "devDependencies"):
        deps = package.get(section)
        if isinstance(deps, Mapping):
            names.update(name for name in deps if isinstance(name, str))
    return frozenset(names)


def framework(package: Mapping[str, Any]) -> tuple[str, str] | None:
    """The recognised framework's name and output directory, or None."""
    deps = dependencies(package)
    return next(((label, out) for dep, label, out in FRAMEWORKS if dep in deps), None)


def node_build(package: Mapping[str, Any], present: Collection[str]) -> NodeBuild | None:
    """The build for a package.json with a ``build`` script; None without one."""
    scripts = package.get("scripts")
    if not isinstance(scripts, Mapping) or not isinstance(scripts.get("build"), str):
        return None
    manager, command = install_command(package, present)
    found = framework(package)
    if found:
        label, out = found
        outputs = (out, *(o for o in NODE_OUTPUTS if o != out))
    else:
        label, outputs = "package.json build script", NODE_OUTPUTS
    env = COREPACK_ENV if manager != "npm" else {}
    return NodeBuild(manager, command, outputs, f"{label} ({manager})", dict(env))


MKDOCS_CONFIGS = ("mkdocs.yml", "mkdocs.yaml")
MKDOCS_VENV = ".buildq-venv"
# Only a plain top-level ``site_dir: x`` line (optionally quoted, optionally commented).
SITE_DIR_RE = re.compile(r"""^site_dir:[ \t]*(["']?)([^"'#\r\n]*?)\1[ \t]*(?:#.*)?$""", re.M)
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def mkdocs_site_dir(config_text: str) -> str | None:
    """The raw ``site_dir`` of an mkdocs config, or None when it is not plainly set."""
    match = SITE_DIR_RE.search(config_text)
    return match.group(2) if match else None


def mkdocs_command(config_name: str, has_requirements: bool) -> str:
    """Make a virtualenv in the checkout, install MkDocs (or requirements.txt), build."""
    venv = MKDOCS_VENV
    what = "-r requirements.txt" if has_requirements else "mkdocs"
    return (
        f"python3 -m venv {venv} && {venv}/bin/pip install {what} && "
        f"{venv}/bin/mkdocs build --config-file {config_name}"
    )
