"""Debian's chromium driven by selenium through Debian's chromium-driver, for the
dashboard's browser test and the log-latency benchmark; and a repository whose build
prints timestamped lines."""

from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import make_repo

# Records when each log line reaches the page, in the page's clock (the host's, as is
# the build's: both run on this machine).
WATCH_LOG_JS = """
window.__arrivals = [];
window.__watchStart = Date.now();
new MutationObserver(function (records) {
  var now = Date.now();
  records.forEach(function (r) {
    r.addedNodes.forEach(function (n) { window.__arrivals.push([n.textContent, now]); });
  });
}).observe(document.getElementById("log"), {childList: true});
"""

BUILD_PY = """\
import os, sys, time
time.sleep(float(sys.argv[2]))  # let the browser open the page first
for n in range(int(sys.argv[1])):
    # coloured, as build tools print with CI=true: the page must show "tick" alone
    print(f"\\x1b[32mtick\\x1b[0m {n} {time.time() * 1000:.1f}", flush=True)
    time.sleep(float(sys.argv[3]))
os.makedirs("out", exist_ok=True)
with open("out/index.html", "w") as fh:
    fh.write("<h1>ticks</h1>")
"""


def ticking_repo(path: Path, lines: int, *, delay_s: float, interval_s: float) -> Path:
    """A repository whose build waits ``delay_s``, then prints ``lines`` lines
    ``tick <n> <epoch ms>`` ``interval_s`` apart, ``tick`` in green (an SGR escape)."""
    command = f"python3 build.py {lines} {delay_s} {interval_s}"
    return make_repo(
        path,
        {
            "build.py": BUILD_PY,
            "buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n',
        },
    )


def chromedriver_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver), or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def need_chromium() -> tuple[str, str]:
    """The binaries, or a skip (a failure in CI, where ``./dev`` installs them)."""
    found = chromedriver_paths()
    if found is None:
        message = "chromium and chromium-driver are needed: apt-get install chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (./dev test installs them as root)")
        pytest.skip(message)
    return found


def open_chromium(browser: str, driver: str, profile: Path) -> Any:
    """A headless chromium under selenium; ``*.localhost`` resolves to 127.0.0.1."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP *.localhost 127.0.0.1",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def arrival_delays_ms(arrivals: list[list[Any]], since_ms: float) -> list[float]:
    """For each ``tick`` line printed after ``since_ms``: arrival minus print time."""
    delays = []
    for text, arrived in arrivals:
        parts = str(text).split()
        if len(parts) == 3 and parts[0] == "tick":
            printed = float(parts[2])
            if printed >= since_ms:
                delays.append(float(arrived) - printed)
    return delays


def p50(values: list[float]) -> float:
    return statistics.median(values)
