"""Shallow clones in an isolated git environment, under a wall-clock timeout, and
source archives made from them without a checkout.

git runs as a plain subprocess, never through GitPython's ``Git.execute`` (which
merges ``os.environ`` into the child and so would hand git the daemon's AWS and
``BUILDQ_*`` secrets). Its environment is built from nothing; its configuration
comes only from the fixed list below (``GIT_CONFIG_NOSYSTEM``, global config
``/dev/null``, per-command items via ``GIT_CONFIG_COUNT`` so that tokens never
appear on a command line). It runs in its own process group, which is killed on
timeout. The clone is fetched without a checkout and its tree is measured with
``git ls-tree`` against the file and byte caps, so a git bomb is refused before
anything expands. The tree is never checked out: :func:`export` streams
``git archive`` through :func:`shared.storage.archive.repack`, which applies the
archive rules (names, symlinks, caps) to the tar stream.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.core.errors import TransientError, ValidationError
from shared.core.settings import Settings
from shared.storage.archive import Skipped, repack
from shared.storage.tarstream import TarFormatError
from uploader.netcheck import HostPolicy, Pin, Resolution
from uploader.repourl import is_commit_id, url_host_port, validate_repo_url

BASE_CONFIG = (
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("transfer.credentialsInUrl", "die"),
    ("safe.bareRepository", "explicit"),
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.protectNTFS", "true"),
    ("core.protectHFS", "true"),
    ("http.followRedirects", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("gc.auto", "0"),
    ("credential.helper", ""),
)
FETCH_OPTIONS = ("--no-tags", "--no-recurse-submodules", "--quiet")
SHA_FALLBACK_DEPTH = 200  # how far back a commit may be when a server refuses want-by-id
CLONE_OPTIONS = ("--depth", "1", "--single-branch", "--no-tags", "--no-checkout", "--quiet")
# ``git archive`` writes what a checkout would (eol and encoding conversions), but
# not what a repository's own .gitattributes asks of an export: files left out
# (export-ignore) or placeholders expanded (export-subst).
ARCHIVE_CONFIG = (*BASE_CONFIG, ("tar.umask", "022"))
EXPORT_ATTRIBUTES = "* -export-ignore -export-subst\n"
PASSTHROUGH_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")
STDERR_CAP = 4096
POLL_S = 0.2


class CloneError(ValidationError):
    """git could not clone the repository (not found, no such ref, too big)."""


class CloneTimedOut(TransientError):
    """git did not finish within the clone timeout: a slow or hanging remote, retried
    with backoff as an attempt of the ingest stage (dead-lettered when they run out)."""


@dataclass(frozen=True)
class CloneSettings:
    """What a clone may do: from operator settings, never from the request."""

    timeout_s: float
    max_files: int
    max_bytes: int
    allow_local: bool = False
    hosts: HostPolicy = field(default_factory=HostPolicy)
    tokens: Mapping[str, str] = field(default_factory=dict)  # host -> "user:token"
    resolution: Resolution = field(default_factory=Resolution)
    low_speed_bytes_s: int = 1000
    low_speed_time_s: int = 30


def clone_settings(settings: Settings) -> CloneSettings:
    """The clone limits and policy of ``settings`` (ValueError on malformed tokens)."""
    tokens = settings.git_tokens.get_secret_value() if settings.git_tokens else None
    return CloneSettings(
        timeout_s=settings.clone_timeout_s,
        max_files=settings.max_source_files,
        max_bytes=settings.max_source_bytes,
        allow_local=settings.allow_local_repos,
        hosts=HostPolicy.of(
            settings.repo_host_allowlist.split(","), settings.repo_host_denylist.split(",")
        ),
        tokens=parse_tokens(tokens),
    )


def parse_tokens(raw: str | None) -> dict[str, str]:
    """``host=token,host2=user:token`` into {host: "user:token"} (user x-access-token)."""
    tokens: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        host, sep, secret = item.strip().partition("=")
        if not sep or not host or not secret:
            raise ValueError("git tokens must look like host=token or host=user:token")
        tokens[host.lower()] = secret if ":" in secret else f"x-access-token:{secret}"
    return tokens


def git_env(home: Path, config: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The whole environment git runs with: no user or system config, never a prompt."""
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_LFS_SKIP_SMUDGE": "1",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
    return env


def clone_config(url: str, settings: CloneSettings, pin: Pin | None) -> list[tuple[str, str]]:
    """The per-clone configuration: the fixed list, the pin, the host's token."""
    config = list(BASE_CONFIG)
    if settings.allow_local:
        config.append(("protocol.file.allow", "always"))
    config += [
        ("http.lowSpeedLimit", str(settings.low_speed_bytes_s)),
        ("http.lowSpeedTime", str(settings.low_speed_time_s)),
    ]
    if pin is not None:
        config.append(("http.curloptResolve", pin.curl_resolve))
        secret = settings.tokens.get(pin.host)
        if secret:
            basic = base64.b64encode(secret.encode()).decode()
            scope = url.split("/", 3)
            config.append(
                (f"http.{scope[0]}//{scope[2]}/.extraHeader", f"Authorization: Basic {basic}")
            )
    return config


def _scrub(text: str, settings: CloneSettings) -> str:
    for secret in settings.tokens.values():
        for shown in (secret, secret.split(":", 1)[-1], base64.b64encode(secret.encode()).decode()):
            text = text.replace(shown, "**********")
    return text


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _exited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s`` (returns as soon as it does)."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL git's whole process group (its remote helpers too), then reap."""
    if proc.poll() is None:  # not reaped yet, so the group id cannot have been reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class _Git:
    env: dict[str, str]
    settings: CloneSettings
    deadline: float
    workdir: Path

    def run(self, args: Sequence[str], *, watch: Path | None = None) -> str:
        """Run git in its own process group; stdout returned, killed at the deadline."""
        with (
            tempfile.TemporaryFile(dir=self.workdir) as out,
            tempfile.TemporaryFile(dir=self.workdir) as err,
        ):
            proc = subprocess.Popen(
                ["git", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                cwd=self.workdir,
            )
            try:
                while not _exited(proc, POLL_S):
                    if time.monotonic() > self.deadline:
                        raise CloneTimedOut(
                            f"git clone timed out after {self.settings.timeout_s:g}s"
                        )
                    if watch is not None and _tree_bytes(watch) > self.settings.max_bytes:
                        raise CloneError(
                            f"repository download exceeds {self.settings.max_bytes} bytes"
                        )
            finally:
                _kill(proc)
            err.seek(0)
            message = err.read(STDERR_CAP).decode("utf-8", "replace").strip()
            if proc.returncode != 0:
                message = _scrub(message, self.settings).replace("\n", " ")
                raise CloneError(f"git {args[0]} failed: {message or proc.returncode}")
            out.seek(0)
            return out.read().decode("utf-8", "replace")

    def measure(self, repo: Path) -> None:
        """Refuse a tree over the caps before it is checked out (git bombs).

        ``ls-tree`` output is streamed and git is killed at the first entry over a
        cap: a bomb's listing is as large as its checkout would be.
        """
        proc = subprocess.Popen(
            ["git", "-C", str(repo), "ls-tree", "-r", "-l", "-z", "--full-tree", "HEAD"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), _kill, (proc,))
        timer.start()
        files = total = 0
        try:
            assert proc.stdout is not None
            pending = b""
            while chunk := proc.stdout.read(65536):
                *entries, pending = (pending + chunk).split(b"\0")
                for entry in entries:
                    fields = entry.partition(b"\t")[0].split()
                    if len(fields) != 4 or fields[1] != b"blob":
                        continue  # submodule entries ("commit") are never fetched
                    files += 1
                    total += int(fields[3]) if fields[3].isdigit() else 0
                    if files > self.settings.max_files:
                        raise CloneError(
                            f"repository has more than {self.settings.max_files} files"
                        )
                    if total > self.settings.max_bytes:
                        raise CloneError(
                            f"repository checkout would exceed {self.settings.max_bytes} bytes"
                        )
        finally:
            timer.cancel()
            _kill(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        if time.monotonic() > self.deadline:
            raise CloneTimedOut(f"git clone timed out after {self.settings.timeout_s:g}s")
        if proc.returncode != 0:
            raise CloneError(f"git ls-tree failed with status {proc.returncode}")


def clone(url: str, dest: Path, *, ref: str | None, settings: CloneSettings) -> str:
    """Clone ``url`` at ``ref`` (default branch if None) into ``dest`` without a
    checkout; returns the commit. :func:`export` makes the source archive from it.

    Re-validates the URL, resolves and pins the host. Blocking: call from a worker
    thread.
    """
    url = validate_repo_url(url, allow_local=settings.allow_local, hosts=settings.hosts)
    pin = None
    where = url_host_port(url)
    if where is not None:
        pin = settings.resolution.pin(*where)
    if url.startswith("/"):
        url = "file://" + url  # --depth is ignored for plain local paths
    deadline = time.monotonic() + settings.timeout_s
    with tempfile.TemporaryDirectory(prefix="buildq-git-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        git = _Git(git_env(home, clone_config(url, settings, pin)), settings, deadline, home)
        if ref and is_commit_id(ref):
            _fetch_commit(git, url, dest, ref)
        else:
            args = ["clone", *CLONE_OPTIONS, *(["--branch", ref] if ref else []), "--", url]
            git.run([*args, str(dest)], watch=dest)
        git.measure(dest)
        commit = git.run(["-C", str(dest), "rev-parse", "--verify", "HEAD^{commit}"]).strip()
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        raise CloneError(f"unexpected commit id {commit[:80]!r}")
    return commit


def _fetch_commit(git: _Git, url: str, dest: Path, commit: str) -> None:
    """Fetch exactly ``commit`` into a new repository at ``dest`` and point HEAD at it.

    ``git fetch --depth 1 <url> <sha>`` works where the server lets a client want any
    reachable commit (GitHub, GitLab, ``uploadpack.allowReachableSHA1InWant``);
    elsewhere the branches' last :data:`SHA_FALLBACK_DEPTH` commits are fetched and
    must contain it. Same isolation, caps and timeout as a clone.
    """
    git.run(["init", "--quiet", "--template=", "--", str(dest)])
    fetch = ["-C", str(dest), "fetch", *FETCH_OPTIONS]
    try:
        git.run([*fetch, "--depth", "1", "--", url, commit], watch=dest)
    except CloneError:  # not a timeout (CloneTimedOut): the server refused the id
        heads = "+refs/heads/*:refs/remotes/origin/*"
        git.run([*fetch, "--depth", str(SHA_FALLBACK_DEPTH), "--", url, heads], watch=dest)
    try:
        git.run(["-C", str(dest), "cat-file", "-e", f"{commit}^{{commit}}"])
    except CloneError:
        raise CloneError(
            f"commit {commit} not found: the server does not serve commits by id and it "
            f"is not among the last {SHA_FALLBACK_DEPTH} commits of any branch"
        ) from None
    git.run(["-C", str(dest), "update-ref", "--no-deref", "HEAD", commit])


def export(
    repo: Path, dest: Path, *, settings: CloneSettings, on_skip: Skipped | None = None
) -> int:
    """Write the tree of ``repo``'s HEAD (a :func:`clone`) to ``dest`` as a source
    archive; returns the file count.

    ``git archive`` runs in the same isolated environment and process group as the
    clone, killed at ``settings.timeout_s``; its tar stream is checked and
    compressed on the fly (:func:`shared.storage.archive.repack`). Blocking: call
    from a worker thread.
    """
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text(EXPORT_ATTRIBUTES)
    deadline = time.monotonic() + settings.timeout_s
    with (
        tempfile.TemporaryDirectory(prefix="buildq-git-") as scratch,
        tempfile.TemporaryFile(dir=scratch) as err,
    ):
        proc = subprocess.Popen(
            ["git", "-C", str(repo), "archive", "--format=tar", "HEAD"],
            env=git_env(Path(scratch), ARCHIVE_CONFIG),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        stdout = proc.stdout
        assert stdout is not None
        timer = threading.Timer(settings.timeout_s, _kill, (proc,))
        timer.start()
        try:
            with dest.open("wb") as out:
                files = repack(
                    stdout,
                    out,
                    max_files=settings.max_files,
                    max_bytes=settings.max_bytes,
                    on_skip=on_skip,
                )
            while stdout.read(65536):  # the end-of-archive padding
                pass
            _exited(proc, max(0.0, deadline - time.monotonic()))
        except TarFormatError:
            # The stream broke off (git failed or was killed): its exit says why.
            stdout.close()
            _exited(proc, max(0.0, deadline - time.monotonic()))
            if proc.returncode == 0:
                raise
        finally:
            timer.cancel()
            _kill(proc)
            stdout.close()
        if proc.returncode != 0:
            if time.monotonic() > deadline:
                raise CloneTimedOut(f"git archive timed out after {settings.timeout_s:g}s")
            err.seek(0)
            message = err.read(STDERR_CAP).decode("utf-8", "replace").strip().replace("\n", " ")
            raise CloneError(f"git archive failed: {message or proc.returncode}")
    return files
