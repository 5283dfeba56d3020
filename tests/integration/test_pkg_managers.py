"""The install-and-build commands detect() emits, run for real through corepack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deployer.buildconfig import detect
from deployer.frameworks import COREPACK_ENV

pytestmark = pytest.mark.slow

BUILD_JS = """\
const fs = require("fs");
require("is-number");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/index.html", "<h1>built</h1>");
"""
# Pinned with corepack's own hash, so no registry signature is needed to trust it.
YARN_BERRY = "yarn@4.12.0+sha224.877304a94a6946ab1d58a358df5ff8af2f7c9d86ea506f05f5c9df05"
# Certificates and proxies of the machine running the tests, nothing else.
PASSTHROUGH = (
    "PATH",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


@pytest.fixture(scope="module", autouse=True)
def npm_registry() -> None:
    if shutil.which("corepack") is None or shutil.which("npm") is None:
        pytest.skip("corepack and npm are needed to run real package managers")
    try:
        subprocess.run(
            ["npm", "view", "is-number", "version"],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the npm registry is not reachable (npm view is-number failed: {exc})")


def base_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    home.mkdir(parents=True)
    env.update({"HOME": str(home), "COREPACK_HOME": str(home / "corepack"), **extra})
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(
    ("manager", "package_manager", "lockfile", "expected"),
    [
        (
            "pnpm",
            None,
            "pnpm-lock.yaml",
            "corepack pnpm install --frozen-lockfile && corepack pnpm run build",
        ),
        (
            "yarn",
            None,
            "yarn.lock",
            "corepack yarn install --frozen-lockfile && corepack yarn run build",
        ),
        (
            "yarn",
            YARN_BERRY,
            "yarn.lock",
            "corepack yarn install --immutable && corepack yarn run build",
        ),
    ],
    ids=["pnpm", "yarn-classic", "yarn-berry"],
)
def test_emitted_command_installs_from_the_lockfile_and_builds(
    tmp_path: Path, manager: str, package_manager: str | None, lockfile: str, expected: str
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    package = {
        "name": "tiny",
        "version": "1.0.0",
        "private": True,
        "scripts": {"build": "node build.js"},
        "dependencies": {"is-number": "7.0.0"},
    }
    if package_manager:
        package["packageManager"] = package_manager
    (source / "package.json").write_text(json.dumps(package))
    (source / "build.js").write_text(BUILD_JS)
    # Yarn Berry from npm rather than repo.yarnpkg.com: only the npm registry is
    # known to be reachable here.
    extra = {"COREPACK_NPM_REGISTRY": "https://registry.npmjs.org"} if package_manager else {}
    make_lock = base_env(tmp_path / "home-lock", {**COREPACK_ENV, **extra})
    run(["corepack", manager, "install"], source, make_lock)
    assert (source / lockfile).is_file()

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("package.json", "build.js", lockfile):
        shutil.copy(source / name, checkout / name)
    config = detect(checkout)
    assert config.command == expected

    env = base_env(tmp_path / "home-build", {"CI": "true", **config.env, **extra})
    run(["/bin/sh", "-c", config.command], checkout, env)

    assert (checkout / config.outputs[0] / "index.html").is_file()
