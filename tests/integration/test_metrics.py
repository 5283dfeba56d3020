"""/metrics counts what the fleet did, through real processes, Redis and S3: the
counters and histogram counts move by exactly the jobs run, and the deployer logs
one ``job.outcome`` line per job with its context bound in every line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import Stack, make_repo

pytestmark = pytest.mark.integration

PHASES = ("accepted", "cloning", "uploading", "queued", "building", "publishing", "total")


def scrape(stack: Stack) -> dict[str, float]:
    """Every sample of ``/metrics``, parsed by prometheus-client, by name and labels."""
    response = httpx.get(f"{stack.url}/metrics", headers=stack.auth)
    assert response.status_code == 200, response.text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def outcome_lines(log: Path, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The deployer's ``job.outcome`` lines, once there are ``count`` of them (each is
    written just after its job's final transition, which the test saw first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        found = [x for x in lines if x.get("event") == "job.outcome"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def wait_for_status(stack: Stack, job_id: str, status: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (
        httpx.get(f"{stack.url}/deployments/{job_id}", headers=stack.auth).json()["status"]
        != status
    ):
        assert time.monotonic() < deadline, f"job {job_id} never reached {status}"
        time.sleep(0.05)


def test_metrics_move_by_exactly_the_jobs_run_and_each_job_logs_one_outcome(
    stack: Stack, tmp_path: Path
) -> None:
    site = {"index.html": "<h1>hi</h1>"}
    broken = {"buildq.toml": '[build]\ncommand = "echo compiling; exit 3"\n'}
    sleepy = {"buildq.toml": '[build]\ncommand = "sleep 60"\n'}
    before = scrape(stack)

    # One job cancelled mid-build (the API ends it; the deployer's late end must not
    # count it again), three that go live and one whose build fails.
    cancelled = stack.deploy(make_repo(tmp_path / "sleepy", sleepy), service="sleepy")
    wait_for_status(stack, cancelled, "building")
    response = httpx.post(
        f"{stack.url}/deployments/{cancelled}/cancel", json={}, headers=stack.auth
    )
    assert response.status_code == 200, response.text
    jobs = {
        stack.deploy(make_repo(tmp_path / f"site{i}", site), service=f"site{i}"): "live"
        for i in range(3)
    }
    jobs[stack.deploy(make_repo(tmp_path / "broken", broken), service="broken")] = "failed"
    for job_id, status in {**jobs, cancelled: "cancelled"}.items():
        assert stack.wait(job_id)["status"] == status
    deployer_log = stack.logs / "deployer-0.log"
    lines = outcome_lines(deployer_log, len(jobs))
    uploader_lines = outcome_lines(stack.logs / "uploader.log", 1)

    after = scrape(stack)

    def moved(sample: str) -> float:
        return after[sample] - before.get(sample, 0)

    assert moved("buildq_deployments_total{status=live}") == 3
    assert moved("buildq_deployments_total{status=failed}") == 1
    assert moved("buildq_deployments_total{status=cancelled}") == 1
    assert moved("buildq_deployments_total{status=superseded}") == 0
    assert moved("buildq_retries_total{}") == 0
    assert moved("buildq_recoveries_total{}") == 0
    for phase in PHASES:
        ran = 3 if phase == "publishing" else 5  # only the live ones publish
        assert moved(f"buildq_phase_seconds_count{{phase={phase}}}") == ran, phase
        assert moved(f"buildq_phase_seconds_bucket{{le=+Inf,phase={phase}}}") == ran, phase
        assert moved(f"buildq_phase_seconds_sum{{phase={phase}}}") >= 0, phase
    assert moved("buildq_lock_wait_seconds_count{}") == 5  # each build took its lock once
    assert after["buildq_jobs_inflight{}"] == 0

    # One outcome line per job: the deployer's for the jobs it ended, the uploader's
    # for the one its cancel ended.
    assert sorted(x["job_id"] for x in lines) == sorted(jobs)
    for line in lines:
        assert line["status"] == jobs[line["job_id"]]
        assert line["attempts"] == 1
        assert line["worker"].startswith("deployer")
        assert {"queued", "building"} <= set(line["phases_ms"])
        assert line["total_ms"] >= line["phases_ms"]["building"]
    failed = next(x for x in lines if x["status"] == "failed")
    assert (failed["service"], failed["error"]) == ("broken", "build exited with status 3")
    assert [(x["job_id"], x["status"]) for x in uploader_lines] == [(cancelled, "cancelled")]
    assert "building" in uploader_lines[0]["phases_ms"]
    for log in (deployer_log, stack.logs / "uploader.log"):
        for raw in log.read_text().splitlines():
            entry = json.loads(raw) if raw.startswith("{") else {}
            if entry.get("job_id") in jobs and entry.get("event") != "job.outcome":
                # every other line of a job a worker ran names its service and worker
                assert entry.get("service"), entry
                assert entry.get("worker"), entry
