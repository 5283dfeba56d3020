"""From a build printing a line to a browser showing it: the deployment page's live log.

    .venv/bin/python -m tests.bench.bench_dashboard [--lines 200] [--rounds 3]

Starts ``buildq up`` (embedded valkey and moto, one deployer), opens headless Debian
chromium (selenium, chromium-driver) on each deployment's page as soon as it is
submitted, and deploys a repository whose build waits, then prints ``--lines`` lines
``tick <n> <epoch ms>`` 20 ms apart. A MutationObserver in the page notes when each
line is added to the log; the delay of a line is that time minus the time printed in
it (one machine, one clock). Prints per-round p50/p90/max and the p50 over all lines.
The path a line takes: the build's pipe, the deployer's batched XADD to the job's
log stream, the uploader's one stream reader (XREAD BLOCK), the follower's channel,
the SSE response, EventSource, the DOM.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.benchstack import post, raise_on_sigterm, start_stack, wait_ended
from tests.integration.browser import (
    WATCH_LOG_JS,
    arrival_delays_ms,
    need_chromium,
    open_chromium,
    ticking_repo,
)

INTERVAL_S = 0.02
START_DELAY_S = 4.0  # the build waits this long, so the page is open before line 1


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raise_on_sigterm()
    browser, driver_path = need_chromium()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        root = Path(tmp)
        repo = ticking_repo(
            root / "ticks", args.lines, delay_s=START_DELAY_S, interval_s=INTERVAL_S
        )
        stack = start_stack(root / "data", deployers=1)
        driver = open_chromium(browser, driver_path, root / "profile")
        everything: list[float] = []
        try:
            with httpx.Client(timeout=30) as client:
                for round_no in range(1, args.rounds + 1):
                    job_id = post(client, stack.api, repo, "ticks")
                    driver.get(f"{stack.api}/ui/deployments/{job_id}")
                    driver.execute_script(WATCH_LOG_JS)
                    since_ms = driver.execute_script("return window.__watchStart;")
                    record = wait_ended(client, stack.api, job_id)
                    time.sleep(0.5)  # the last lines' way to the page
                    arrivals = driver.execute_script("return window.__arrivals;")
                    delays = arrival_delays_ms(arrivals, float(since_ms))
                    everything += delays
                    print(
                        f"round {round_no}: {record['status']}, {len(delays)} of "
                        f"{args.lines} lines seen live; delay ms p50 "
                        f"{statistics.median(delays):.1f}  p90 {quantile(delays, 0.9):.1f}"
                        f"  max {max(delays):.1f}",
                        flush=True,
                    )
        finally:
            driver.quit()
            stack.stop()
    print(
        f"build line -> browser, {len(everything)} lines over {args.rounds} rounds: "
        f"p50 {statistics.median(everything):.1f} ms, p90 {quantile(everything, 0.9):.1f} ms"
    )


if __name__ == "__main__":
    main()
