"""A git that hangs forever does not hold an ingest slot forever: each clone is killed
at BUILDQ_CLONE_TIMEOUT_S, counted as an ingest attempt and retried with backoff, and
the job is dead-lettered when the attempts run out — with no git process left behind.

The hang is real: the repository's branch ref is a FIFO nobody writes, so git's
upload-pack blocks opening it, exactly as a server that accepts and never answers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.faults import FAST
from tests.integration.helpers import Stack, make_repo

pytestmark = pytest.mark.integration

ATTEMPTS = 2


@pytest.fixture
def stack(bq_env: dict[str, str], tmp_path: Path, s3_client: object) -> Iterator[Stack]:
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **bq_env,
        **FAST,
        "BUILDQ_CLONE_TIMEOUT_S": "1.5",
        "BUILDQ_MAX_ATTEMPTS": str(ATTEMPTS),
    }
    running = Stack(env, logs).start(deployers=1, slots=1)
    yield running
    running.stop()


def hanging_repo(path: Path) -> Path:
    repo = make_repo(path, {"index.html": "never served"})
    ref = repo / ".git" / "refs" / "heads" / "main"
    ref.unlink()
    os.mkfifo(ref)
    return repo


def processes_reading(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (git left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in argv and "pytest" not in argv:
            found.append(argv)
    return found


def test_a_hanging_clone_uses_up_its_ingest_attempts_and_is_dead_lettered(
    stack: Stack, tmp_path: Path
) -> None:
    repo = hanging_repo(tmp_path / "hangs")
    started = time.monotonic()

    job_id = stack.deploy(repo, service="hangs")
    record = stack.wait(job_id, timeout_s=90)

    assert record["status"] == "failed", record
    assert record["dead"] is True
    assert record["ingest_attempts"] == ATTEMPTS
    assert f"gave up after {ATTEMPTS} attempts" in record["error"]
    assert "timed out after 1.5s" in record["error"]
    assert "building" not in record["phases"]
    logs = stack.logs_text(job_id)
    assert logs.count("timed out after 1.5s") >= ATTEMPTS, logs[-2000:]
    print(f"dead-lettered after {time.monotonic() - started:.1f}s")
    # Every clone's process group was killed: nothing still waits on the FIFO.
    deadline = time.monotonic() + 5
    while processes_reading(repo) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_reading(repo) == []
