"""Content-addressed publishing over HTTP on a real moto server: an unchanged
redeploy uploads only its manifest, a one-file change one blob, a first publish of
many small files a pack; through the real stack the job log says so and both
deployments stay served."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deployer.publish import Target, known_blobs, publish_site
from shared.cli.demo_repo import GIT_IDENTITY
from shared.core.settings import Settings
from shared.storage.manifest import ManifestCache, manifest_key
from shared.storage.s3 import S3Storage, make_s3_client
from tests.integration.helpers import Stack, make_repo, running_stack

pytestmark = pytest.mark.integration

SITE = {f"page{i}.html": f"<h1>page {i}</h1>" for i in range(40)} | {
    "index.html": "<h1>home</h1>",
    "assets/app.js": "console.log('v1')",
}
LIMITS = {"max_files": 1000, "max_bytes": 10**7}


class CountingClient:
    """The boto3 client, with every PutObject and UploadPart key recorded."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.puts: list[str] = []

    def put_object(self, **kwargs: Any) -> Any:
        self.puts.append(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.anyio
async def test_redeploys_upload_only_what_changed(
    bq_settings: Settings, s3_client: Any, tmp_path: Path
) -> None:
    counting = CountingClient(make_s3_client(bq_settings))
    storage = S3Storage(counting, bq_settings.s3_bucket, concurrency=8)  # type: ignore[arg-type]
    out = write_tree(tmp_path / "v1", SITE)

    async def publish(job_id: str, seq: int, live: str | None) -> list[str]:
        counting.puts.clear()
        parent, known = await known_blobs(ManifestCache(storage), live)  # cold cache
        await publish_site(
            storage,
            out,
            Target(job_id, "web", seq, False),
            known=known,
            parent=parent,
            concurrency=8,
            **LIMITS,
        )
        return sorted(counting.puts)

    first = await publish("job1", 1, None)
    first_blobs = [k for k in first if k.startswith("blobs/")]
    unchanged = await publish("job2", 2, "job1")
    (out / "assets" / "app.js").write_text("console.log('v2')")
    one_file = await publish("job3", 3, "job2")

    assert first == sorted([*first_blobs, manifest_key("job1")])
    assert len(first_blobs) == 1  # 42 small files: one pack, one PutObject
    assert unchanged == [manifest_key("job2")]
    assert len(one_file) == 2
    assert manifest_key("job3") in one_file
    assert [k for k in one_file if k.startswith("blobs/")]


def test_the_stack_reuses_blobs_and_gc_keeps_what_is_served(
    stack: Stack, tmp_path: Path, s3_client: Any
) -> None:
    repo = make_repo(tmp_path / "dedupe", SITE)
    first = stack.wait(stack.deploy(repo))
    again = stack.wait(stack.deploy(repo))
    (repo / "assets" / "app.js").write_text("console.log('v2')")
    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "commit", "-qam", "v2"], cwd=repo, env=env, check=True)
    changed = stack.wait(stack.deploy(repo))

    assert [r["status"] for r in (first, again, changed)] == ["live"] * 3
    files = f"published {len(SITE)} files"
    assert f"{files} (" in stack.logs_text(first["id"])
    assert f"0 uploaded, {len(SITE)} already stored" in stack.logs_text(again["id"])
    assert f"1 uploaded, {len(SITE) - 1} already stored" in stack.logs_text(changed["id"])
    assert stack.site("dedupe", "assets/app.js").text == "console.log('v2')"
    assert stack.preview(first["id"], "assets/app.js").text == "console.log('v1')"

    gc = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "gc", "--dry-run"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gc.returncode == 0, gc.stderr
    assert "would delete 0 manifest(s) and 0 blob(s)" in gc.stdout
    assert stack.preview(first["id"], "assets/app.js").status_code == 200


# Rewrites index.html in place: the same inode and size, its mtime put back to the
# other files' (the commit's). Only its ctime tells the publish it changed.
IN_PLACE = "printf '<h1>v2</h1>' 1<> index.html && touch -r a.txt index.html"


@pytest.mark.parametrize("sandbox", ["auto", "process"])
def test_a_file_the_build_rewrote_in_place_is_published_as_rewritten(
    bq_env: dict[str, str], tmp_path: Path, sandbox: str
) -> None:
    """Digests taken at extraction are trusted only for files the build left alone,
    whether the tree changed owner for the build (``auto``: a borrowed uid under
    bubblewrap, as root) or not (``process``)."""
    files = {f"p{i}.html": f"<p>{i}</p>" for i in range(30)}
    repo = make_repo(
        tmp_path / "inplace",
        files
        | {
            "index.html": "<h1>v1</h1>",
            "a.txt": "a",
            "buildq.toml": f'[build]\ncommand = "{IN_PLACE}"\noutput = "."\n',
        },
    )
    env = {**bq_env, "BUILDQ_BUILD_SANDBOX": sandbox}
    with running_stack(env, tmp_path) as stack:
        first = stack.wait(stack.deploy(repo, service="inplace"))
        again = stack.wait(stack.deploy(repo, service="inplace"))

        assert [first["status"], again["status"]] == ["live", "live"], stack.logs_text(first["id"])
        assert stack.site("inplace", "index.html").text == "<h1>v2</h1>"
        assert stack.preview(first["id"], "index.html").text == "<h1>v2</h1>"
        assert stack.site("inplace", "p7.html").text == "<p>7</p>"
        total = len(files) + 3
        assert f"0 uploaded, {total} already stored" in stack.logs_text(again["id"])
