"""Hostile repository URLs and contents through the real stack: nothing runs, nothing
connects, nothing from the host is published."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Stack, make_repo
from tests.integration.test_hostile_http import module_stack
from tests.unit.test_hostile_repos import git
from tests.unit.test_hostile_urls import Listener

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repos(
    valkey_url: str, s3_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from module_stack(valkey_url, s3_url, tmp_path_factory, {})


@pytest.fixture(scope="module")
def s3(repos: Stack) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=repos.env["BUILDQ_S3_ENDPOINT_URL"], region_name="us-east-1"
    )


def all_objects(repos: Stack, s3: Any) -> dict[str, bytes]:
    bucket = repos.env["BUILDQ_S3_BUCKET"]
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def submit(repos: Stack, url: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{repos.url}/deployments", json={"repo_url": url, **fields})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("ext::sh -c touch% {marker}", "whitespace or control"),
        ("ext::sh -c 'touch {marker}'", "whitespace or control"),
        ("ext::touch", "remote-helper"),
        ("fd::3", "remote-helper"),
        ("--upload-pack=touch", "start with '-'"),
        ("-u{marker}", "start with '-'"),
        ("ssh://-oProxyCommand=touch/x", "https://"),
        ("https://user:secret@github.com/a/b", "credentials"),
        ("https://github.com/a/b?x=$(touch)", "$, ~"),
        ("https://github.com/a/b?x=1", "query"),
        ("https://github.com/~root/b", "$, ~"),
        ("https://github.com/a/b\n--upload-pack=touch", "control"),
    ],
)
def test_hostile_urls_are_422_and_run_nothing(
    repos: Stack, tmp_path: Path, template: str, message: str
) -> None:
    marker = tmp_path / "marker"
    response = submit(repos, template.format(marker=marker), service="x")
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]
    assert not marker.exists()
    assert httpx.get(f"{repos.url}/deployments", params={"service": "x"}).json() == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]"]
)
def test_loopback_in_every_spelling_is_422_and_never_connects(repos: Stack, host: str) -> None:
    listener = Listener()
    try:
        response = submit(repos, f"https://{host}:{listener.port}/team/repo.git", service="lb")
        assert response.status_code == 422, response.text
        assert "non-global address" in response.json()["error"]["message"]
        assert listener.connections == []
    finally:
        listener.close()


def test_link_local_metadata_address_is_refused(repos: Stack) -> None:
    response = submit(repos, "https://169.254.169.254/latest/meta-data", service="meta")
    assert response.status_code == 422
    assert "169.254.169.254" in response.json()["error"]["message"]


@pytest.mark.slow
def test_a_name_resolving_to_this_machine_fails_the_job_and_never_connects(repos: Stack) -> None:
    name = socket.gethostname()
    answers = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    listener = Listener(sorted(answers)[0])  # where a connection would land
    try:
        response = submit(repos, f"https://{name}:{listener.port}/team/repo.git", service="self")
        assert response.status_code == 202, (answers, response.text)
        record = repos.wait(response.json()["id"])
        assert record["status"] == "failed"
        assert "resolves to non-global address" in record["error"]
        assert listener.connections == []
    finally:
        listener.close()


@pytest.mark.slow
def test_symlinks_and_host_files_are_never_published(repos: Stack, tmp_path: Path, s3: Any) -> None:
    secret = tmp_path / "deployer.env"
    secret.write_text("AWS_SECRET_ACCESS_KEY=host-secret-value\n")
    repo = make_repo(tmp_path / "links", {"index.html": "<h1>ok</h1>", "dist/x.txt": "x"})
    for name, target in [
        ("passwd", "/etc/passwd"),
        ("environ", "/proc/self/environ"),
        ("aws-credentials", os.path.expanduser("~/.aws/credentials")),
        ("secret.env", str(secret)),
        ("escape", "../../../../../../etc"),
        ("dist/inner", "../index.html"),
    ]:
        (repo / name).symlink_to(target)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "links")
    response = submit(repos, f"file://{repo}", service="links")
    job_id = response.json()["id"]
    record = repos.wait(job_id)
    assert record["status"] == "live", record
    objects = all_objects(repos, s3)
    published = sorted(json.loads(objects[f"manifests/{job_id}.json"])["files"])
    assert published == ["dist/x.txt", "index.html"]
    for key, data in objects.items():
        assert b"host-secret-value" not in data, key
        assert b"root:x:0:0" not in data, key
    log = repos.logs_text(job_id)
    assert "skipped symlink 'passwd'" in log
    assert "skipped symlink 'secret.env'" in log


@pytest.mark.slow
def test_a_non_utf8_file_name_fails_the_job_clearly(repos: Stack, tmp_path: Path, s3: Any) -> None:
    repo = tmp_path / "badname"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    with open(os.path.join(os.fsencode(repo), b"caf\xe9.html"), "wb") as fh:
        fh.write(b"x")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "latin-1 name")
    job_id = submit(repos, f"file://{repo}", service="badname").json()["id"]
    record = repos.wait(job_id)
    assert record["status"] == "failed"
    assert "not valid UTF-8" in record["error"]
    assert f"manifests/{job_id}.json" not in all_objects(repos, s3)


@pytest.mark.slow
def test_a_git_bomb_fails_before_it_expands(repos: Stack, tmp_path: Path) -> None:
    repo = tmp_path / "bomb"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    tree = git(repo, "hash-object", "-w", "--stdin", stdin=b"\0" * (1 << 20))
    kind, mode = "blob", "100644"
    for _ in range(3):  # 1,000 paths to one 1 MiB blob: a 1 GiB checkout
        entries = "".join(f"{mode} {kind} {tree}\tf{i}\n" for i in range(10))
        tree = git(repo, "mktree", stdin=entries.encode())
        kind, mode = "tree", "040000"
    git(repo, "update-ref", "refs/heads/main", git(repo, "commit-tree", tree, "-m", "bomb"))
    free_before = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    record = repos.wait(submit(repos, f"file://{repo}", service="bomb").json()["id"])
    assert record["status"] == "failed"
    assert "would exceed" in record["error"]
    free_after = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert free_before - free_after < 100 << 20
    leftovers = subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, check=False)
    assert leftovers.stdout == b""
