"""The repositories the benchmarks deploy: a real front-end tree from an npm package,
and tiny sites whose build is one command. Each is a fresh git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.cli.demo_repo import GIT_IDENTITY

# ~1,700 files (SVG icons, CSS, JS, web fonts) of a real front-end asset package;
# --quick uses a small one. Tarballs are cached, so later runs need no registry.
FULL_PACKAGE = "@fortawesome/fontawesome-free@5.15.4"
QUICK_PACKAGE = "bootstrap@3.4.1"
CACHE_DIR = Path.home() / ".cache" / "buildq-bench"
CHANGED_FILE = "css/all.css"  # the file a one-file-change redeploy edits


@dataclass(frozen=True)
class Tree:
    """A committed repository and what it holds (the working tree, without ``.git``)."""

    repo: Path
    package: str
    files: int
    bytes: int

    def paths(self) -> list[Path]:
        """Every file of the working tree, sorted, without ``.git``."""
        found = []
        for root, dirs, names in os.walk(self.repo):
            dirs[:] = [d for d in dirs if d != ".git"]
            found += [Path(root) / name for name in names]
        return sorted(found)


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def buildq_toml(command: str, output: str = ".") -> str:
    return f'[build]\ncommand = "{command}"\noutput = "{output}"\n'


def package_tarball(package: str, say: Callable[[str], None] = print) -> Path:
    """``npm pack`` of ``package``, from the cache when it is there."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    name = package.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"
    cached = CACHE_DIR / name
    if cached.is_file():
        return cached
    say(f"fetching {package} from the npm registry (once; cached in {CACHE_DIR})")
    scratch = CACHE_DIR / "incoming"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    subprocess.run(
        ["npm", "pack", "--silent", package, "--pack-destination", str(scratch)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    packed = list(scratch.glob("*.tgz"))
    if len(packed) != 1:
        raise RuntimeError(f"npm pack {package} made {len(packed)} tarballs")
    packed[0].rename(cached)
    shutil.rmtree(scratch, ignore_errors=True)
    return cached


def package_tree(package: str, repo: Path, say: Callable[[str], None] = print) -> Tree:
    """The files of an npm package, plus a ``buildq.toml`` that publishes them as they
    are (``command = "true"``), committed into a fresh repository at ``repo`` and
    packed."""
    tarball = package_tarball(package, say)
    repo.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            rel = Path(member.name).relative_to("package")  # npm packs under package/
            target = repo / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    (repo / "buildq.toml").write_text(buildq_toml("true"))
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, package)
    # Packed, as a forge keeps a pushed repository: receive-pack stores a push of 100
    # objects or more (transfer.unpackLimit) as the pack it came in, and a clone reuses
    # it. A fresh commit leaves every object loose, and cloning that compresses each
    # one again (0.7 s of the cloning phase here): the fixture's cost, not a remote's.
    git(repo, "repack", "-a", "-d", "-q")
    tree = Tree(repo, package, 0, 0)
    paths = tree.paths()
    return Tree(repo, package, len(paths), sum(p.stat().st_size for p in paths))


def change_one_file(tree: Tree, marker: str) -> str:
    """Edit one file of the tree and commit it; returns the new commit."""
    target = tree.repo / CHANGED_FILE
    if not target.is_file():
        target = next(p for p in tree.paths() if p.name != "buildq.toml")
    with target.open("a") as handle:
        handle.write(f"\n/* {marker} */\n")
    return commit_all(tree.repo, f"change one file: {marker}")


def tiny_site(repo: Path, command: str) -> Path:
    """A one-page site whose build is ``command``, committed into a fresh repository."""
    repo.mkdir(parents=True)
    (repo / "index.html").write_text("<!doctype html><title>bench</title><p>bench</p>\n")
    (repo / "buildq.toml").write_text(buildq_toml(command))
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "tiny site")
    return repo
