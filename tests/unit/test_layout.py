"""The architecture stays visible: imports run one way, keys and Lua live in one place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_shared_imports_neither_service() -> None:
    offenders = {f: n & {"uploader", "deployer"} for f, n in _imports("shared").items()}
    assert not {f: n for f, n in offenders.items() if n}


def test_services_never_import_each_other() -> None:
    for package, other in (("uploader", "deployer"), ("deployer", "uploader")):
        offenders = [f for f, names in _imports(package).items() if other in names]
        assert not offenders, f"{package} imports {other}: {offenders}"


def test_redis_key_strings_are_built_only_in_keys_module() -> None:
    for package in ("shared", "uploader", "deployer"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "keys.py":
                continue
            text = path.read_text("utf-8")
            for literal in ('"{buildq}', "'{buildq}", ':job:"', ':queue"'):
                assert literal not in text, f"{path} spells a Redis key: {literal}"


def test_no_module_is_much_over_400_lines() -> None:
    for package in ("shared", "uploader", "deployer"):
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text("utf-8").splitlines())
            assert lines <= 450, f"{path} has {lines} lines: split it by concern"


# shared/ is layered: a sub-package imports only the layers listed for it.
LAYERS = {
    "core": set(),
    "redis": {"core"},
    "storage": {"core"},
    "engine": {"core", "redis", "storage"},
    "coord": {"core", "redis", "storage", "engine"},
    "cli": {"core", "redis", "storage", "engine", "coord"},
}


def _shared_layers_imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        found.update(m.split(".")[1] for m in modules if m.startswith("shared."))
    return found


def test_shared_is_layered_and_imports_run_down_the_layers() -> None:
    top = {p.name for p in (ROOT / "shared").glob("*.py")}
    assert top == {"__init__.py"}, f"modules outside a layer: {top - {'__init__.py'}}"
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
    for layer, allowed in LAYERS.items():
        for path in (ROOT / "shared" / layer).rglob("*.py"):
            if "demo" in path.parts:  # package data: the demo site's own build script
                continue
            wrong = _shared_layers_imported(path) - allowed - {layer}
            assert not wrong, f"{path.relative_to(ROOT)} ({layer}) imports {sorted(wrong)}"
