"""What a build's caches are, decided from plain data before it runs: which kinds,
their keys in the bucket, what counts as a tool's cache, what fits the bound."""

from __future__ import annotations

import enum
import hashlib
import json
import platform
import re
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.buildconfig import BuildConfig
from deployer.frameworks import LOCKFILES, NODE_MARKERS, install_command

NODE_MODULES = "node_modules"
TOOL_CACHES = frozenset({".cache", ".tmp", ".vite", ".vite-temp"})
MAX_PACKAGE_JSON_BYTES = 256 * 1024
MAX_LOCKFILE_BYTES = 64 * 1024 * 1024
# `npm ci` deletes node_modules before it installs: restoring one is wasted work.
NPM_CI_RE = re.compile(r"(?:^|[\s;&|(])npm\s+(?:ci|clean-install)(?:\s|$|[;&|)])")
# The install steps of buildq's detected npm commands; a restored node_modules made
# from the same lockfile and package.json (package.json alone without a lockfile)
# stands in for them.
NPM_CI_STEP = "npm ci && "
NPM_INSTALL_STEP = "npm install && "
MB = 1024 * 1024


class CacheKind(enum.Enum):
    """What a cache holds; the value begins its object's name."""

    PACKAGES = "pm"
    NODE_MODULES = "node_modules"


def cache_prefix(service: str) -> str:
    """Where every cache object of ``service`` lives."""
    return f"cache/{service}/"


@dataclass(frozen=True, slots=True)
class CachePlan:
    """Which caches a build of ``service`` uses, decided before it runs."""

    service: str
    manager: str
    lock_name: str  # the lockfile node_modules is keyed by, or package.json
    lock_hash: str
    node_modules: bool
    why_not: str = ""  # why node_modules is not cached
    install_step: str = ""  # the command's prefix a restored node_modules makes moot

    def kinds(self) -> tuple[CacheKind, ...]:
        if self.node_modules:
            return (CacheKind.PACKAGES, CacheKind.NODE_MODULES)
        return (CacheKind.PACKAGES,)

    def tag(self, kind: CacheKind) -> str:
        return self.manager if kind is CacheKind.PACKAGES else self.lock_hash[:16]

    def key(self, kind: CacheKind) -> str:
        return f"{cache_prefix(self.service)}{kind.value}-{self.tag(kind)}.tar.zst"

    def header(self, kind: CacheKind) -> dict[str, str]:
        return {"service": self.service, "kind": kind.value, "key": self.tag(kind)}

    def label(self, kind: CacheKind) -> str:
        if kind is CacheKind.PACKAGES:
            return self.manager
        what = "lockfile" if self.lock_name != "package.json" else "package.json"
        return f"node_modules for {what} {self.lock_hash[:12]}"


def lock_hash(name: str, data: bytes) -> str:
    """The node_modules key: the lockfile's sha256, with the OS and machine (a
    package's native binary is built for one)."""
    digest = hashlib.sha256(f"{platform.system()}/{platform.machine()}/{name}\0".encode())
    digest.update(data)
    return digest.hexdigest()


def outputs_overlap(outputs: Collection[str]) -> bool:
    """Whether an output directory could contain (or be) node_modules."""
    return any(o in (".", NODE_MODULES) or o.startswith(f"{NODE_MODULES}/") for o in outputs)


def plan_cache(
    service: str,
    package: Mapping[str, Any],
    present: Collection[str],
    lock: tuple[str, bytes],
    *,
    command: str,
    outputs: Collection[str],
    in_repository: bool,
    detected: bool = False,
    package_json: bytes = b"",
) -> CachePlan:
    """The caches of a build from plain data: the package.json, which marker files
    are present, the lockfile (or package.json) and its bytes, the command, the
    output candidates, whether the repository holds its own node_modules, whether
    the command is buildq's own detection (not the repository's or the request's)
    and the package.json's bytes.

    buildq's detected ``npm ci && …`` keeps node_modules keyed by the lockfile *and*
    package.json (``npm install && …`` without a lockfile: by package.json): a restored
    one is what that install made from exactly these inputs before, in a build that
    succeeded, so the install step is skipped (:attr:`CachePlan.install_step`); ``npm
    install`` would only find it up to date. A command someone wrote runs as written."""
    manager, detected_command = install_command(package, present)
    name, data = lock
    ours = detected and command == detected_command
    ci_step = ours and command.startswith(NPM_CI_STEP)
    why_not = ""
    if in_repository:
        why_not = "the repository has its own node_modules"
    elif outputs_overlap(outputs):
        why_not = "an output directory could contain node_modules"
    elif NPM_CI_RE.search(command) and not ci_step:
        why_not = "npm ci removes node_modules"
    key = lock_hash(name, data + b"\0package.json\0" + package_json if ci_step else data)
    step = ""
    if ours and not why_not:
        step = next((p for p in (NPM_CI_STEP, NPM_INSTALL_STEP) if command.startswith(p)), "")
    return CachePlan(service, manager, name, key, not why_not, why_not, step)


def is_tool_cache(rel: str) -> bool:
    """Whether ``rel`` is in a directory build tools write inside node_modules
    (``.cache``: babel-loader, webpack, ESLint; ``.tmp``: the TypeScript build info
    of Vite's templates; ``.vite``): not what the install left, and rewritten by
    every build, so keeping it would upload node_modules again after each one."""
    parts = rel.split("/", 2)
    return len(parts) > 1 and parts[0] == NODE_MODULES and parts[1] in TOOL_CACHES


def fits(sizes: Mapping[CacheKind, int], bound_bytes: int) -> list[CacheKind]:
    """The kinds to save: in order, while their total stays within ``bound_bytes``."""
    kept: list[CacheKind] = []
    total = 0
    for kind in CacheKind:
        if kind in sizes and total + sizes[kind] <= bound_bytes:
            kept.append(kind)
            total += sizes[kind]
    return kept


def stale_keys(listed: Collection[str], plan: CachePlan, kind: CacheKind) -> list[str]:
    """The kind's other keys of the service: replaced by the one just saved."""
    prefix = f"{cache_prefix(plan.service)}{kind.value}-"
    return sorted(k for k in listed if k.startswith(prefix) and k != plan.key(kind))


def megabytes(size: int) -> str:
    """A size for the log: ``512 KB``, ``3.4 MB``, ``120 MB``."""
    if size < MB:
        return f"{-(-size // 1024)} KB"
    return f"{size / MB:.1f} MB" if size < 10 * MB else f"{size // MB} MB"


def _regular(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is a regular file (not a link) within ``limit``."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        return None
    return path.read_bytes()


def read_plan(service: str, config: BuildConfig, checkout: Path) -> CachePlan | None:
    """The plan for a build in ``checkout`` (blocking), None if it is not a Node
    build or its package.json cannot be read."""
    raw = _regular(checkout / "package.json", MAX_PACKAGE_JSON_BYTES)
    if raw is None or config.command is None:
        return None
    try:
        package = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(package, dict):
        return None
    present = {name for name in NODE_MARKERS if _regular(checkout / name, MAX_LOCKFILE_BYTES)}
    lockfile = next((name for name, _ in LOCKFILES if name in present), None)
    lock = (
        (lockfile, _regular(checkout / lockfile, MAX_LOCKFILE_BYTES) or b"") if lockfile else None
    )
    in_repository = (checkout / NODE_MODULES).is_symlink() or (checkout / NODE_MODULES).exists()
    return plan_cache(
        service,
        package,
        present,
        lock or ("package.json", raw),
        command=config.command,
        outputs=config.outputs,
        in_repository=in_repository,
        detected=config.origin == "package.json",
        package_json=raw,
    )
