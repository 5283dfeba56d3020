"""The two stages are one value each: their keys, statuses and fields never overlap,
and a stage read back from what a record or a worker stores is the same stage."""

from __future__ import annotations

import pytest

from shared.engine.jobs import TERMINAL, JobRecord, Status
from shared.engine.stages import BUILD, INGEST, STAGES, Stage
from shared.redis.keys import Keys

KEYS = Keys("unit")


def test_the_stages_are_ingest_then_build() -> None:
    assert STAGES == (INGEST, BUILD)


@pytest.mark.parametrize(
    "part",
    [
        lambda s: s.name,
        lambda s: s.queue(KEYS),
        lambda s: s.resume_status,
        lambda s: s.started_status,
        lambda s: s.attempts_field,
    ],
    ids=["name", "source", "resume_status", "started_status", "attempts_field"],
)
def test_no_two_stages_share_a_key_status_or_field(part: object) -> None:
    values = [part(s) for s in STAGES]  # type: ignore[operator]
    assert len(set(values)) == len(STAGES)


def test_a_stage_list_is_none_of_the_other_keys() -> None:
    others = {KEYS.delayed, KEYS.dead, KEYS.jobs, KEYS.events, KEYS.workers, KEYS.active("w")}
    assert not {s.queue(KEYS) for s in STAGES} & others


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_is_consistent_with_itself(stage: Stage) -> None:
    assert stage.resume_status in stage.statuses
    assert stage.started_status in stage.statuses
    assert stage.resume_status is not stage.started_status
    assert stage.attempts_field in JobRecord.model_fields
    assert stage.new_worker_id().startswith(f"{stage.name}-")


def test_every_waiting_or_running_status_belongs_to_exactly_one_stage() -> None:
    delayed = {Status.RETRYING, Status.WAITING}  # wait in {ns}:delayed, not a stage list
    assert not INGEST.statuses & BUILD.statuses
    assert INGEST.statuses | BUILD.statuses == set(Status) - TERMINAL - delayed


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_a_stage_round_trips_through_what_is_stored(stage: Stage) -> None:
    assert Stage.named(stage.name) is stage  # a record's retry_stage
    assert Stage.of_queue(KEYS, stage.queue(KEYS)) is stage  # a worker's queue
    for status in stage.statuses:
        assert Stage.of_status(status) is stage


def test_the_stored_names_are_the_ones_records_already_hold() -> None:
    """Records and worker hashes written before Stage existed keep their meaning."""
    assert (INGEST.name, BUILD.name) == ("ingest", "deployer")
    assert (INGEST.attempts_field, BUILD.attempts_field) == ("ingest_attempts", "attempts")
    assert Stage.named(None) is BUILD  # a record from before retry_stage was written
