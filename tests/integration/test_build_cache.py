"""The build cache through the whole stack with a real Vite app (packages from the npm
registry): a second build of a service starts from its cache, another service's
build of the same app does not get it, and the cache never reaches the output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.cli.demo_repo import GIT_IDENTITY
from tests.integration.helpers import Stack
from tests.integration.test_frontend_apps import _registry_reachable, create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUILD_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def vite_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: front-end templates cannot be created here")
    problem = _registry_reachable()
    if problem:
        pytest.skip(f"the npm registry is not reachable from here: {problem}")
    return create_app(tmp_path_factory.mktemp("apps"), "vanilla")


def deploy(stack: Stack, repo: Path, service: str) -> str:
    job_id = stack.deploy(repo, service=service)
    record = stack.wait(job_id, timeout_s=BUILD_TIMEOUT_S)
    log = stack.logs_text(job_id)
    assert record["status"] == "live", (record, log[-3000:])
    return log


def test_a_second_build_starts_from_its_services_cache_and_no_other_service_gets_it(
    stack: Stack, vite_app: Path, s3_client: object
) -> None:
    first = deploy(stack, vite_app, "cache-a")
    assert "buildq: no build cache for cache-a yet" in first
    assert re.search(r"^added \d+ packages", first, re.M), first[-3000:]
    assert re.search(r"buildq: saved build cache \(npm [\d.]+ [KM]B as .*, node_modules for "
                     r"package\.json [0-9a-f]{12} ", first), first[-3000:]  # fmt: skip

    second = deploy(stack, vite_app, "cache-a")
    # node_modules matched: npm's own cache is not even fetched.
    assert re.search(r"buildq: restored build cache \(node_modules for package\.json "
                     r"[0-9a-f]{12} [\d.]+ MB\) in [\d.]+ s; npm cache not needed", second), (
        second[-3000:])  # fmt: skip
    # node_modules is what npm install made from this package.json: it does not run.
    assert "buildq: node_modules restored for this package.json: skipping npm install" in second
    assert not re.search(r"^added \d+ packages", second, re.M), second[-3000:]
    # npm rewrote its hidden lockfile, nothing else: nothing is uploaded again.
    assert "buildq: build cache unchanged (node_modules for package.json" in second, second
    assert "saved build cache" not in second, second

    other = deploy(stack, vite_app, "cache-b")
    assert "buildq: no build cache for cache-b yet" in other
    assert "restored build cache" not in other
    assert re.search(r"^added \d+ packages", other, re.M), other[-3000:]

    bucket = stack.env["BUILDQ_S3_BUCKET"]
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="cache/")  # type: ignore[attr-defined]
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert [k.split("/")[1] for k in keys] == ["cache-a", "cache-a", "cache-b", "cache-b"]
    assert all(re.fullmatch(r"cache/cache-[ab]/(pm-npm|node_modules-[0-9a-f]{16})\.tar\.zst", k)
               for k in keys)  # fmt: skip
    manifests = s3_client.list_objects_v2(Bucket=bucket, Prefix="manifests/")  # type: ignore[attr-defined]
    for obj in manifests["Contents"]:  # every path any deployment published
        body = s3_client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()  # type: ignore[attr-defined]
        assert b"index.html" in body
        assert b"node_modules" not in body
        assert b"_cacache" not in body
    page = stack.site("cache-a", "node_modules/.package-lock.json")
    assert "lockfileVersion" not in page.text  # the SPA fallback, never the cache


def test_with_a_lockfile_the_detected_npm_ci_is_skipped_on_an_exact_cache_hit(
    stack: Stack, vite_app: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "locked"
    shutil.copytree(vite_app, repo)
    subprocess.run(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"],
                   cwd=repo, check=True, capture_output=True, timeout=BUILD_TIMEOUT_S)  # fmt: skip
    env = {**os.environ, **GIT_IDENTITY}
    for cmd in (["git", "add", "package-lock.json"], ["git", "commit", "-qm", "lockfile"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)

    first = deploy(stack, repo, "cache-ci")
    assert "buildq: build from package.json: npm ci && npm run build" in first
    assert re.search(r"^added \d+ packages", first, re.M), first[-3000:]
    assert "node_modules for lockfile" in first, first[-3000:]

    second = deploy(stack, repo, "cache-ci")
    assert "restored for this package-lock.json and package.json: skipping npm ci" in second
    assert not re.search(r"^added \d+ packages", second, re.M), second[-3000:]
    assert "npm cache not needed" in second, second[-3000:]
    assert "saved build cache" not in second, second[-3000:]

    (repo / "package.json").write_text(
        (repo / "package.json").read_text().replace('"private": true', '"private": true, "x": 1')
    )
    subprocess.run(["git", "commit", "-qam", "package.json only"], cwd=repo, env=env, check=True)
    third = deploy(stack, repo, "cache-ci")  # another package.json: npm ci runs again
    assert "skipping npm ci" not in third, third[-3000:]
    assert re.search(r"^added \d+ packages", third, re.M), third[-3000:]
