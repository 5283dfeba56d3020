"""Retry decisions: what is transient, when to back off, when to give up."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.core.errors import StorageError, ValidationError
from shared.engine.jobs import Status
from shared.engine.outcome import after_fault, dead_letter, transient_cause
from shared.engine.retry import backoff_s, is_transient_git_error
from shared.engine.stages import BUILD


def test_transient_errors_are_their_own_cause() -> None:
    for exc in (StorageError("S3 unreachable"), RedisConnectionError("down"), OSError("disk")):
        assert transient_cause(exc) is exc


def test_a_group_of_transient_failures_retries_for_its_first() -> None:
    first = StorageError("a")
    group = ExceptionGroup("uploads", [first, ExceptionGroup("inner", [OSError("b")])])
    assert transient_cause(group) is first


@pytest.mark.parametrize(
    "exc",
    [
        ValidationError("bad name"),
        ValueError("bug"),
        ExceptionGroup("mixed", [StorageError("a"), ValueError("bug")]),
    ],
)
def test_anything_else_is_not_retried(exc: Exception) -> None:
    assert transient_cause(exc) is None


def test_after_fault_backs_off_then_dead_letters() -> None:
    kwargs = {
        "stage": BUILD,
        "max_attempts": 3,
        "base_s": 1.0,
        "cap_s": 60.0,
        "dead_list": "{t}:dead",
    }
    first = after_fault(1, StorageError("S3 unreachable"), **kwargs)  # type: ignore[arg-type]
    assert first.status is Status.RETRYING
    assert first.record_fields() == {"error": "S3 unreachable", "retry_stage": "deployer"}
    assert first.delay_s is not None
    assert 0.5 <= first.delay_s <= 1.0
    last = after_fault(3, RedisConnectionError("down"), **kwargs)  # type: ignore[arg-type]
    assert last.status is Status.FAILED
    assert last.push == "{t}:dead"
    assert last.record_fields() == {
        "error": "gave up after 3 attempts: ConnectionError: down",
        "dead": "1",
    }


def test_a_job_whose_worker_kept_dying_counts_only_real_attempts() -> None:
    outcome = dead_letter(4, "its worker died", max_attempts=3, dead_list="d")
    assert outcome.fields["error"] == "gave up after 3 attempts: its worker died"


def test_backoff_doubles_is_capped_and_jittered_within_half() -> None:
    assert backoff_s(1, base_s=1, cap_s=60, rand=lambda: 0.0) == 0.5
    assert backoff_s(1, base_s=1, cap_s=60, rand=lambda: 1.0) == 1.0
    assert backoff_s(4, base_s=1, cap_s=60, rand=lambda: 1.0) == 8.0
    assert backoff_s(20, base_s=1, cap_s=60, rand=lambda: 0.0) == 30.0
    assert backoff_s(20, base_s=1, cap_s=60, rand=lambda: 1.0) == 60.0


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("fatal: unable to access 'https://x/': Could not resolve host: x", True),
        ("error: RPC failed; curl 56 Connection reset by peer", True),
        ("fatal: repository 'https://x/a/b/' not found", False),
        ("fatal: Remote branch nope not found in upstream origin", False),
    ],
)
def test_git_network_failures_are_transient_and_missing_repos_are_not(
    message: str, transient: bool
) -> None:
    assert is_transient_git_error(message) is transient


def test_cancellation_is_never_mistaken_for_a_fault() -> None:
    # The consumer catches Exception/ExceptionGroup only, so a cancelled job (or a
    # group carrying a cancellation) is never retried or failed by accident.
    assert not issubclass(asyncio.CancelledError, Exception)
