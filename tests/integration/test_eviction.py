"""A Redis that may evict keys is refused at start, by every process, before it
touches anything else; BUILDQ_ALLOW_EVICTION=true runs anyway with a warning; doctor
reports the policy. Each test runs its own valkey-server (the policy is server-wide)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from shared.cli.embedded import free_port, free_ports, start_valkey, stop_process
from tests.integration.helpers import make_env

pytestmark = pytest.mark.integration


@pytest.fixture
def evicting_valkey(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = start_valkey(tmp_path / "valkey", port, appendonly=False)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_sync.Redis.from_url(url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    yield url
    stop_process(server)


def run(
    module: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *module],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("process", ["deployer", "uploader"])
def test_a_process_refuses_to_start_on_a_redis_that_evicts(
    process: str, evicting_valkey: str, s3_url: str, tmp_path: Path
) -> None:
    # Both listeners get a port known free: BUILDQ_SITES_PORT defaults to BUILDQ_PORT + 1,
    # which nobody checked (CI once found it taken, and the uploader refused for that).
    api_port, sites_port = free_ports(2)
    env = make_env(
        evicting_valkey,
        s3_url,
        tmp_path,
        BUILDQ_PORT=str(api_port),
        BUILDQ_SITES_PORT=str(sites_port),
    )

    result = run(["-m", process], env)

    assert result.returncode == 2, result.stderr[-2000:]
    assert f"buildq {process}: Redis maxmemory-policy is 'allkeys-lru'" in result.stderr
    assert "BUILDQ_ALLOW_EVICTION=true" in result.stderr
    client = redis_sync.Redis.from_url(evicting_valkey)
    assert client.dbsize() == 0, "it wrote to Redis before refusing"
    client.close()


def test_allow_eviction_starts_with_a_warning_and_doctor_reports_the_policy(
    evicting_valkey: str, s3_url: str, tmp_path: Path
) -> None:
    env = make_env(evicting_valkey, s3_url, tmp_path, BUILDQ_ALLOW_EVICTION="true")
    deployer = subprocess.Popen(
        [sys.executable, "-m", "deployer"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert deployer.stdout is not None
        seen = []
        for line in deployer.stdout:  # bounded: the deployer logs consumer.started soon
            seen.append(line)
            if "consumer.started" in line:
                break
            assert len(seen) < 200, "".join(seen)
    finally:
        stop_process(deployer)
        if deployer.stdout is not None:
            deployer.stdout.close()
    warnings = [line for line in seen if "redis.eviction_allowed" in line]
    assert warnings, "".join(seen)
    assert "allkeys-lru" in warnings[0]

    doctor = run(["-m", "shared.cli.main", "doctor"], env)
    assert doctor.returncode == 1, doctor.stdout
    assert "redis maxmemory-policy: allkeys-lru - WARNING" in doctor.stdout
