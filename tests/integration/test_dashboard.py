"""The dashboard, queue positions and ``/events`` on a real stack (uploader and
deployer processes, valkey, moto), and the dashboard in a real browser (Debian's
chromium under selenium)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.browser import need_chromium, open_chromium, ticking_repo
from tests.integration.helpers import Stack, make_repo, running_stack

pytestmark = pytest.mark.integration
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def wait_status(stack: Stack, job_id: str, status: str, timeout_s: float = 60) -> dict[str, Any]:
    """Poll until the job reaches ``status`` (tests may poll; the product never does)."""
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = httpx.get(f"{stack.url}/deployments/{job_id}", headers=stack.auth).json()
        if record.get("status") == status:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}: {record}")


def test_fifth_of_five_queued_jobs_moves_up_when_one_ahead_is_cancelled(
    stack: Stack, tmp_path: Path
) -> None:
    paused = httpx.put(f"{stack.url}/fleet", json={"paused": True}, headers=stack.auth)
    assert paused.status_code == 200, paused.text
    repo = make_repo(tmp_path / "repo", {"index.html": "<p>in line</p>"})
    ids = []
    for n in range(5):
        ids.append(stack.deploy(repo, service=f"line-{n}"))
        wait_status(stack, ids[-1], "queued")  # one at a time: the queue keeps this order

    fifth = httpx.get(f"{stack.url}/deployments/{ids[4]}", headers=stack.auth).json()
    first = httpx.get(f"{stack.url}/deployments/{ids[0]}", headers=stack.auth).json()
    queue = httpx.get(f"{stack.url}/queue", headers=stack.auth).json()
    cancelled = httpx.post(f"{stack.url}/deployments/{ids[1]}/cancel", json={}, headers=stack.auth)
    after = httpx.get(f"{stack.url}/deployments/{ids[4]}", headers=stack.auth).json()
    status = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "status", ids[4], "--api", stack.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=stack.env,
    )

    assert (first["position"], fifth["position"]) == (1, 5)
    assert fifth["eta_s"] is None  # paused: nothing will start
    assert [p["id"] for p in queue["positions"]] == ids
    assert [p["position"] for p in queue["positions"]] == [1, 2, 3, 4, 5]
    assert cancelled.status_code == 200, cancelled.text
    assert after["position"] == 4
    assert status.returncode == 0, status.stderr
    assert "position\t4" in status.stdout.splitlines()
    assert "live" not in status.stdout


def text_of(driver: Any, element_id: str) -> str:
    """An element's text, read in one script call (the panels are swapped whole)."""
    found: str = driver.execute_script(
        "var e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
        element_id,
    )
    return found


def has(driver: Any, selector: str) -> bool:
    found: bool = driver.execute_script(
        "return document.querySelector(arguments[0]) !== null;", selector
    )
    return found


@pytest.mark.slow
def test_dashboard_in_a_browser_follows_a_deploy_and_its_log(stack: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = need_chromium()
    repo = ticking_repo(tmp_path / "ticks", 40, delay_s=1.5, interval_s=0.02)
    driver = open_chromium(browser, driver_path, tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 90, poll_frequency=0.1)
        driver.get(f"{stack.url}/")
        wait.until(lambda d: text_of(d, "live") == "live")
        driver.execute_script("window.__sameDocument = true;")  # gone after any reload

        job_id = stack.deploy(repo, service="ticks")
        row = f"#recent a[href='/ui/deployments/{job_id}']"
        wait.until(lambda d: has(d, row))
        badge = f"//a[@href='/ui/deployments/{job_id}']/ancestor::tr//span[text()='{{}}']"
        wait.until(lambda d: "building" in text_of(d, "recent"))
        during = tmp_path / "dashboard-during-deploy.png"
        driver.save_screenshot(str(during))
        wait.until(lambda d: d.find_elements("xpath", badge.format("live")))
        same_document = driver.execute_script("return window.__sameDocument === true;")
        workers = text_of(driver, "workers")
        driver.save_screenshot(str(tmp_path / "dashboard-live.png"))

        driver.execute_script("document.querySelector(arguments[0]).click();", row)
        wait.until(lambda d: "==> live" in text_of(d, "log"))
        log_lines = text_of(driver, "log").splitlines()
        driver.save_screenshot(str(tmp_path / "deployment.png"))
        shutil.copyfile(during, DOCS_SCREENSHOT)
    finally:
        driver.quit()

    assert same_document  # the row appeared and turned live without a reload
    assert "deployer" in workers  # the worker panel lists the deployer
    ticks = [line for line in log_lines if line.startswith("tick ")]
    assert [t.split()[1] for t in ticks] == [str(n) for n in range(40)]
    assert log_lines.index("==> building") < log_lines.index(ticks[0])


@pytest.fixture
def token_stack(
    bq_env: dict[str, str], tmp_path: Path, s3_client: object
) -> Iterator[tuple[Stack, str]]:
    """A stack with API tokens: the browser's (a deployer of ``signed-in``) and the
    test's own (an admin, sent by ``Stack``'s calls)."""
    browser_token = "browser-deployer-token-0123456789"
    bq_env["BUILDQ_API_TOKENS"] = (
        f"dev:deployer:signed-in={browser_token},ada:admin=admin-token-0123456789"
    )
    bq_env["BUILDQ_API_TOKEN"] = "admin-token-0123456789"
    with running_stack(bq_env, tmp_path) as running:
        yield running, browser_token


@pytest.mark.slow
def test_with_tokens_the_browser_logs_in_through_the_form_and_uses_the_dashboard(
    token_stack: tuple[Stack, str], tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    stack, token = token_stack
    browser, driver_path = need_chromium()
    repo = make_repo(tmp_path / "signed-in", {"index.html": "<p>signed in</p>"})
    paused = httpx.put(f"{stack.url}/fleet", json={"paused": True}, headers=stack.auth)
    assert paused.status_code == 200, paused.text
    driver = open_chromium(browser, driver_path, tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 90, poll_frequency=0.1)
        driver.get(f"{stack.url}/")
        wait.until(lambda d: has(d, "form#login"))
        sent_to = driver.current_url
        driver.find_element("id", "token").send_keys("not-the-token")
        driver.find_element("css selector", "form#login button").click()
        wait.until(lambda d: "That token is not valid." in d.page_source)
        driver.save_screenshot(str(tmp_path / "login-refused.png"))
        driver.find_element("id", "token").send_keys(token)
        driver.find_element("css selector", "form#login button").click()
        wait.until(lambda d: text_of(d, "live") == "live")  # /events opened with the cookie
        landed = driver.current_url
        cookies = driver.get_cookies()

        job_id = stack.deploy(repo, service="signed-in")
        row = f"#recent a[href='/ui/deployments/{job_id}']"
        wait.until(lambda d: has(d, row))  # pushed over /events, no reload
        driver.save_screenshot(str(tmp_path / "logged-in.png"))
        wait_status(stack, job_id, "queued")
        driver.execute_script("document.querySelector(arguments[0]).click();", row)
        wait.until(lambda d: has(d, "button[data-action='cancel']"))
        # The page's own POST .../cancel, made with the cookie (and the browser's Origin).
        driver.find_element("css selector", "button[data-action='cancel']").click()
        wait.until(lambda d: "cancel: " in text_of(d, "message"))
        message = text_of(driver, "message")
        driver.save_screenshot(str(tmp_path / "logged-in-deployment.png"))
    finally:
        driver.quit()

    assert sent_to == f"{stack.url}/login"
    assert landed == f"{stack.url}/"
    [session] = [c for c in cookies if c["name"] == "buildq_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert token not in session["value"]
    assert message == "cancel: cancelled"
    assert stack.wait(job_id)["status"] == "cancelled"
    assert httpx.get(f"{stack.url}/", headers={"Accept": "text/html"}).status_code == 303


@pytest.mark.slow
def test_the_log_view_shows_a_wait_for_a_persons_lock_once(stack: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = need_chromium()
    taken = httpx.put(f"{stack.url}/locks/frozen", json={"reason": "release freeze"})
    assert taken.status_code == 200, taken.text
    repo = make_repo(tmp_path / "frozen", {"index.html": "after the freeze"})
    job_id = stack.deploy(repo, service="frozen")
    wait_status(stack, job_id, "waiting")
    driver = open_chromium(browser, driver_path, tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        driver.get(f"{stack.url}/ui/deployments/{job_id}")
        wait.until(lambda d: "==> waiting" in text_of(d, "log"))
        raw = stack.logs_text(job_id)
        deadline = time.monotonic() + 30
        while raw.count("==> waiting") < 3:  # rounds that found the lock still held
            assert time.monotonic() < deadline, raw
            time.sleep(0.2)
            raw = stack.logs_text(job_id)
        released = httpx.request("DELETE", f"{stack.url}/locks/frozen", json={})
        assert released.status_code == 200, released.text
        wait.until(lambda d: "==> live" in text_of(d, "log"))
        log_lines = text_of(driver, "log").splitlines()
        driver.save_screenshot(str(tmp_path / "waited.png"))
    finally:
        driver.quit()

    phases = [line for line in log_lines if line.startswith("==> ")]
    assert phases.count("==> waiting") == 1, log_lines
    assert phases.count("==> building") == 2, log_lines  # before the wait, and the build
    assert phases[-3:] == ["==> building", "==> publishing", "==> live"], log_lines
    assert any("is locked by" in line and "(release freeze)" in line for line in log_lines)
