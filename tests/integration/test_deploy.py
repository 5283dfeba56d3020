"""A repository URL becomes a live site, through real processes, Redis and S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Stack, fetch, make_repo

pytestmark = pytest.mark.integration

STATIC_FILES = {
    "index.html": "<!doctype html><h1>static home</h1>",
    "about/index.html": "<h1>about us</h1>",
    "style.css": "body { color: red }",
    "app.js": "console.log('hi')",
    "data/info.json": '{"ok": true}',
}


def test_static_site_goes_live_with_phases_and_is_served(
    stack: Stack, tmp_path: Path, s3_client: Any
) -> None:
    repo = make_repo(tmp_path / "My_Static.Site", STATIC_FILES)
    job_id = stack.deploy(repo)
    record = stack.wait(job_id)

    assert record["status"] == "live", record
    assert record["service"] == "my-static-site"
    assert record["url"] == f"http://my-static-site.localhost:{stack.sites_port}/"
    assert len(record["commit"]) == 40
    assert record["attempts"] == 1
    for phase in ("accepted", "cloning", "uploading", "queued", "building", "publishing"):
        timing = record["phases"][phase]
        assert timing["duration_ms"] is not None, phase
        assert timing["duration_ms"] >= 0, phase
    assert record["error"] is None

    home = fetch(record["url"])
    assert home.status_code == 200
    assert home.text == STATIC_FILES["index.html"]
    assert home.headers["content-type"].startswith("text/html")
    assert home.headers["x-content-type-options"] == "nosniff"
    css = fetch(f"{record['url']}style.css")
    assert css.headers["content-type"].startswith("text/css")
    assert css.text == STATIC_FILES["style.css"]
    assert "javascript" in fetch(f"{record['url']}app.js").headers["content-type"]
    assert fetch(f"{record['url']}data/info.json").json() == {"ok": True}
    about = fetch(f"{record['url']}about", follow_redirects=False)
    assert about.status_code == 308
    assert about.headers["location"].endswith("/about/")
    assert fetch(f"{record['url']}about/").text == STATIC_FILES["about/index.html"]
    assert fetch(f"{record['url']}missing.html").status_code == 404
    assert fetch(f"{record['url']}../../etc/passwd").status_code == 404
    preview = stack.preview(job_id)
    assert preview.text == STATIC_FILES["index.html"]

    bucket = stack.env["BUILDQ_S3_BUCKET"]
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"sources/{job_id}.tar.zst" in keys
    manifest = json.loads(
        s3_client.get_object(Bucket=bucket, Key=f"manifests/{job_id}.json")["Body"].read()
    )
    assert set(manifest["files"]) == set(STATIC_FILES)
    # a packed file's bytes are in its pack's blob (a few tiny files share one)
    assert {f"blobs/{f.get('pack') or f['sha256']}" for f in manifest["files"].values()} <= keys
    saved = json.loads(
        s3_client.get_object(Bucket=bucket, Key=f"deployments/{job_id}.json")["Body"].read()
    )
    assert saved["status"] == "live"
    assert saved["id"] == job_id
    alias = json.loads(
        s3_client.get_object(Bucket=bucket, Key="aliases/my-static-site.json")["Body"].read()
    )
    assert alias["id"] == job_id

    log = stack.logs_text(job_id)
    assert "==> building" in log
    assert "==> live" in log
    assert "publishing the repository as is" in log


BUILD_PY = """
import os, pathlib
out = pathlib.Path("dist")
out.mkdir()
(out / "index.html").write_text("<h1>" + os.environ["SITE_TITLE"] + "</h1>")
(out / "env.json").write_text(__import__("json").dumps(dict(os.environ)))
print("built for", os.environ["BUILDQ_SERVICE"])
"""


def test_buildq_toml_build_runs_in_scrubbed_env_and_publishes_output(
    stack: Stack, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "built",
        {
            "buildq.toml": '[build]\ncommand = "python3 build.py"\noutput = "dist"\n'
            '[build.env]\nSITE_TITLE = "Built Title"\n',
            "build.py": BUILD_PY,
            "README.md": "not published",
        },
    )
    job_id = stack.deploy(repo, service="built-site")
    record = stack.wait(job_id)
    assert record["status"] == "live", (record, stack.logs_text(job_id))

    page = fetch(record["url"])
    assert page.text == "<h1>Built Title</h1>"
    assert fetch(f"{record['url']}README.md").status_code == 404
    build_env = fetch(f"{record['url']}env.json").json()
    assert build_env["BUILDQ_JOB_ID"] == job_id
    assert build_env["BUILDQ_COMMIT"] == record["commit"]
    leaked = {k for k in build_env if k.startswith("AWS_") or k.startswith("BUILDQ_REDIS")}
    assert not leaked, f"daemon secrets reached the build: {leaked}"
    assert "built for built-site" in stack.logs_text(job_id)


def test_request_build_overrides_repository_config(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "override", {"buildq.toml": '[build]\ncommand = "exit 9"\n'})
    build = {"command": "mkdir -p out && echo override > out/index.html", "output": "out"}
    record = stack.wait(stack.deploy(repo, service="override", build=build))
    assert record["status"] == "live", record
    assert fetch(record["url"]).text.strip() == "override"


def test_failing_build_fails_job_with_stderr_in_log_and_promotes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "broken",
        {"buildq.toml": '[build]\ncommand = "echo compiling; echo boom-on-stderr >&2; exit 3"\n'},
    )
    job_id = stack.deploy(repo, service="broken")
    record = stack.wait(job_id)

    assert record["status"] == "failed"
    assert record["error"] == "build exited with status 3"
    log = stack.logs_text(job_id)
    assert "compiling" in log
    assert "boom-on-stderr" in log
    assert "==> failed" in log
    assert stack.site("broken").status_code == 404
    assert stack.preview(job_id).status_code == 404


def test_unknown_repository_fails_in_cloning_with_git_message(stack: Stack, tmp_path: Path) -> None:
    missing = tmp_path / "not-a-repo"
    missing.mkdir()
    record = stack.wait(stack.deploy(missing, service="nothing"))
    assert record["status"] == "failed"
    assert record["error"].startswith("git clone failed")
    assert "building" not in record["phases"]


def test_invalid_requests_are_refused_with_clear_errors(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "Bad_Name!", {"index.html": "x"})
    cases = [
        ({"repo_url": "ext::sh -c touch% /tmp/pwned"}, "whitespace"),
        ({"repo_url": "ext::sh"}, "remote-helper"),
        ({"repo_url": "http://example.com/a/b"}, "https://"),
        ({"repo_url": "https://user:tok@example.com/a/b"}, "credentials"),
        ({"repo_url": f"file://{repo}", "service": "Bad_Name"}, "invalid service name"),
        ({"repo_url": f"file://{repo}", "ref": "--upload-pack=x"}, "invalid ref"),
        ({"repo_url": f"file://{repo}", "root_dir": "../etc"}, "root_dir"),
        ({"repo_url": f"file://{repo}", "surprise": 1}, "surprise"),
        ({}, "repo_url"),
    ]
    for body, message in cases:
        response = httpx.post(f"{stack.url}/deployments", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid"
        assert message in error["message"], (body, error)
    assert httpx.get(f"{stack.url}/deployments").json() == []
    assert httpx.get(f"{stack.url}/deployments/zzz").status_code == 404


def test_ref_and_root_dir_select_what_is_built(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "mono", {"site/index.html": "main branch", "other/x": "y"})
    import subprocess

    from shared.cli.demo_repo import GIT_IDENTITY

    env = {**GIT_IDENTITY, "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "checkout", "-q", "-b", "release"], cwd=repo, check=True, env=env)
    (repo / "site" / "index.html").write_text("release branch")
    subprocess.run(["git", "commit", "-qam", "release"], cwd=repo, check=True, env=env)

    record = stack.wait(stack.deploy(repo, service="mono", ref="release", root_dir="site"))
    assert record["status"] == "live", record
    assert record["ref"] == "release"
    assert record["root_dir"] == "site"
    assert fetch(record["url"]).text == "release branch"
    assert fetch(f"{record['url']}other/x").status_code == 404


def test_queue_endpoint_shows_workers_with_heartbeats(stack: Stack) -> None:
    status = httpx.get(f"{stack.url}/queue").json()
    kinds = sorted(w["kind"] for w in status["workers"])
    assert kinds == ["deployer", "ingest"]
    for worker in status["workers"]:
        assert worker["heartbeat_age_ms"] < 10_000
        assert status["active"][worker["id"]] == []
    assert status["length"] == 0
    assert status["pending"] == []
    assert status["paused"] is False
    assert httpx.get(f"{stack.url}/readyz").json()["ready"] is True


def test_metrics_report_queues_and_workers_in_prometheus_format(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'buildq_queue_length{queue="build"} 0.0',
        'buildq_queue_length{queue="dead"} 0.0',
        'buildq_workers{kind="deployer"} 1.0',
        'buildq_workers{kind="ingest"} 1.0',
        'buildq_worker_slots{kind="deployer"} 2.0',
        "buildq_fleet_paused 0.0",
    ):
        assert line in text, text
