"""Real front-end apps from their templates, through the whole stack with the default
limits, opened in a real headless browser (Debian's chromium): the app's scripts ran
if the page shows text that only its JavaScript renders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.cli.demo_repo import GIT_IDENTITY
from tests.integration.helpers import Stack, fetch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUILD_TIMEOUT_S = 420
RENDERED_BY_JS = "Get started"  # in both templates' script, not in their index.html


def _registry_reachable() -> str | None:
    """None if the npm registry answers, else why not."""
    try:
        done = subprocess.run(
            ["npm", "view", "create-vite", "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"npm did not answer: {exc}"
    return None if done.returncode == 0 else done.stderr.strip()[-300:]


@pytest.fixture(scope="module")
def npm() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: front-end templates cannot be created here")
    problem = _registry_reachable()
    if problem:
        pytest.skip(f"the npm registry is not reachable from here: {problem}")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: ./dev test installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def create_app(parent: Path, template: str) -> Path:
    """``npm create vite@latest`` with ``template``, committed as a git repository."""
    name = f"vite-{template}"
    subprocess.run(
        [
            "npm",
            "create",
            "--yes",
            "vite@latest",
            name,
            "--",
            "--template",
            template,
            "--no-interactive",
        ],
        cwd=parent,
        check=True,
        capture_output=True,
        timeout=120,
    )
    repo = parent / name
    env = {**os.environ, **GIT_IDENTITY}
    for argv in (
        ["git", "init", "--quiet", "--initial-branch=main"],
        ["git", "add", "--all"],
        ["git", "commit", "--quiet", "--message", f"npm create vite --template {template}"],
    ):
        subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True)
    return repo


def browser_dom(chromium: str, url: str, profile: Path, screenshot: Path) -> str:
    """The page's DOM after its scripts ran, as headless chromium sees it."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
    ]
    subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", "--window-size=1200,900", url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    done = subprocess.run(
        [chromium, *flags, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory, npm: None) -> Path:
    return tmp_path_factory.mktemp("apps")


@pytest.mark.parametrize("template", ["vanilla", "react-ts"])
def test_a_vite_app_goes_live_and_renders_in_a_browser(
    stack: Stack, apps: Path, chromium: str, template: str, tmp_path: Path
) -> None:
    repo = create_app(apps, template)
    job_id = stack.deploy(repo)
    record = stack.wait(job_id, timeout_s=BUILD_TIMEOUT_S)
    log = stack.logs_text(job_id)

    assert record["status"] == "live", (record, log[-3000:])
    assert record["url"] == f"http://vite-{template}.localhost:{stack.sites_port}/"
    assert "detected Vite (npm)" in log
    assert "single-page app" in log
    page = fetch(record["url"])
    assert page.status_code == 200
    assert RENDERED_BY_JS not in page.text  # only the script renders it
    script = next(s for s in page.text.split('"') if s.startswith("/assets/") and s.endswith(".js"))
    asset = fetch(record["url"] + script.lstrip("/"))
    assert asset.status_code == 200
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"

    shot = tmp_path / f"{template}.png"
    dom = browser_dom(chromium, record["url"], tmp_path / "profile", shot)

    assert RENDERED_BY_JS in dom, dom[-2000:]
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


SNOOP = """<!doctype html><meta charset="utf-8">
<div id="api">pending</div><div id="own">pending</div>
<script>
fetch("API/queue", {credentials: "include"})
  .then(r => r.text()).then(t => { api.textContent = "READ:" + t.slice(0, 40); })
  .catch(() => { api.textContent = "BLOCKED"; });
fetch("/data.txt").then(r => r.text()).then(t => { own.textContent = "OWN:" + t; });
</script>"""


def test_a_sites_script_cannot_read_the_api(stack: Stack, chromium: str, tmp_path: Path) -> None:
    from tests.integration.helpers import make_repo

    page = SNOOP.replace("API", stack.url)
    repo = make_repo(tmp_path / "snoop", {"index.html": page, "data.txt": "same-origin ok"})
    record = stack.wait(stack.deploy(repo, service="snoop"))
    assert record["status"] == "live", record

    dom = browser_dom(chromium, record["url"], tmp_path / "profile", tmp_path / "snoop.png")

    assert '<div id="own">OWN:same-origin ok</div>' in dom, dom  # the page's scripts ran
    assert '<div id="api">BLOCKED</div>' in dom, dom
    assert "READ:{" not in dom
