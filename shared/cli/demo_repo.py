"""Turn the bundled demo site (package data) into a local git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "buildq demo",
    "GIT_AUTHOR_EMAIL": "demo@buildq.invalid",
    "GIT_COMMITTER_NAME": "buildq demo",
    "GIT_COMMITTER_EMAIL": "demo@buildq.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def _copy(src: resources.abc.Traversable, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name == "__pycache__":
            continue
        if item.is_dir():
            _copy(item, dest / item.name)
        else:
            (dest / item.name).write_bytes(item.read_bytes())


def make_demo_repo(dest: Path) -> Path:
    """(Re)create ``dest`` as a one-commit git repository of the demo site."""
    shutil.rmtree(dest, ignore_errors=True)
    _copy(resources.files("shared.cli").joinpath("demo"), dest)
    env = {**os.environ, **GIT_IDENTITY}
    for argv in (
        ["git", "init", "--quiet", "--initial-branch=main"],
        ["git", "add", "--all"],
        ["git", "commit", "--quiet", "--message", "buildq demo site"],
    ):
        subprocess.run(argv, cwd=dest, env=env, check=True, capture_output=True)
    return dest
