"""Shallow clones with GitPython, in an isolated git environment, under a timeout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import git

from shared.errors import ValidationError

GIT_CONFIG = (
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.file.allow=always",
    "transfer.credentialsInUrl=die",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "http.followRedirects=false",
)


class CloneError(ValidationError):
    """git could not clone the repository (not found, no such ref, timed out)."""


def git_env(home: Path) -> dict[str, str]:
    """The environment git runs with: no user or system config, never a prompt."""
    return {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
        "GIT_HTTP_LOW_SPEED_TIME": "30",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }


def clone(url: str, dest: Path, *, ref: str | None, timeout_s: float) -> str:
    """Clone ``url`` at ``ref`` (default branch if None) into ``dest``; returns the commit.

    Blocking: call from a worker thread.
    """
    args = ["git"]
    for item in GIT_CONFIG:
        args += ["-c", item]
    args += ["clone", "--depth", "1", "--single-branch", "--no-tags", "--quiet"]
    if ref:
        args += ["--branch", ref]
    if url.startswith("/"):
        url = "file://" + url  # --depth is ignored for plain local paths
    args += ["--", url, str(dest)]
    with tempfile.TemporaryDirectory(prefix="buildq-git-home-") as home:
        try:
            git.Git().execute(
                args, kill_after_timeout=timeout_s, env=git_env(Path(home)), stdout_as_string=True
            )
        except git.GitCommandError as exc:
            message = (exc.stderr or "").strip().replace("stderr: ", "").strip("'\" \n")
            if exc.status in (-9, -15) or "timed out" in message.lower():
                raise CloneError(f"git clone timed out after {timeout_s:g}s") from None
            raise CloneError(f"git clone failed: {message or exc.status}") from None
    return git.Repo(dest).head.commit.hexsha
