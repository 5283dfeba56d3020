"""How long an instant rollback takes to go live: from the ``POST
/services/{name}/rollback`` call until the sites origin serves the old content.

    .venv/bin/python -m tests.bench.bench_rollback [--rounds 15]

Starts ``buildq up`` (embedded valkey and a moto S3 server), deploys two versions of
one site, then rolls back and forth ``--rounds`` times (to the other version each
time, by id), polling the live site until it answers with that version's text.
Prints each round's API time and API-call-to-serving time, their medians, and a
GOAL line (the issue's "under one second").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.benchstack import BenchError, deploy, raise_on_sigterm, start_stack
from tests.bench.goals import Goal
from tests.integration.helpers import fetch, make_repo

SERVICE = "rollback-bench"
GOAL_S = 1.0
SERVE_TIMEOUT_S = 10.0


def site_repo(path: Path, text: str) -> Path:
    command = f"mkdir -p out && echo {text} > out/index.html"
    return make_repo(path, {"buildq.toml": f'[build]\ncommand = "{command}"\noutput = "out"\n'})


def live_url(client: httpx.Client, api: str) -> str:
    """The service's address on the sites origin (the API redirects there)."""
    response = client.get(f"{api}/sites/{SERVICE}/", follow_redirects=False)
    if response.status_code not in (302, 307, 308):
        raise BenchError(f"GET /sites/{SERVICE}/: {response.status_code} {response.text}")
    return response.headers["location"]


def serving(url: str, text: str) -> bool:
    response = fetch(url, headers={"Cache-Control": "no-cache"})
    return response.status_code == 200 and response.text.strip() == text


def one_round(client: httpx.Client, api: str, url: str, to: str, text: str) -> tuple[float, float]:
    """Roll back to ``to``; (API call seconds, call-to-serving seconds)."""
    started = time.perf_counter()
    answer = client.post(f"{api}/services/{SERVICE}/rollback", json={"to": to})
    answered = time.perf_counter()
    if answer.status_code != 200:
        raise BenchError(f"rollback: {answer.status_code} {answer.text}")
    deadline = started + SERVE_TIMEOUT_S
    while not serving(url, text):
        if time.perf_counter() > deadline:
            raise BenchError(f"{to} not served {SERVE_TIMEOUT_S}s after its rollback")
    return answered - started, time.perf_counter() - started


def run(data_dir: Path, rounds: int) -> None:
    stack = start_stack(data_dir / "stack", deployers=1)
    try:
        with httpx.Client(timeout=30) as client:
            versions = [
                (deploy(client, stack.api, site_repo(data_dir / name, name), SERVICE).id, name)
                for name in ("version-one", "version-two")
            ]
            url = live_url(client, stack.api)
            if not serving(url, "version-two"):
                raise BenchError("the second deployment is not what the site serves")
            api_s, live_s = [], []
            for n in range(rounds):
                job_id, text = versions[n % 2]  # one, two, one, ...: always the other one
                call, total = one_round(client, stack.api, url, job_id, text)
                api_s.append(call)
                live_s.append(total)
                print(
                    f"round {n + 1:>3}: API {call * 1000:7.1f} ms, serving {total * 1000:7.1f} ms"
                )
    finally:
        stack.stop()
    print(
        f"rollback over {rounds} rounds: API median {statistics.median(api_s) * 1000:.1f} ms, "
        f"call to serving median {statistics.median(live_s) * 1000:.1f} ms "
        f"(max {max(live_s) * 1000:.1f} ms)"
    )
    print(Goal("rollback_to_serving_s", statistics.median(live_s), GOAL_S).line())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    raise_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp:
        run(Path(tmp), max(1, args.rounds))


if __name__ == "__main__":
    main()
