"""A daemon settles its heap once, after its first job: everything alive then is
frozen out of later full collections, whatever the job's outcome."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.core.heap import settle_after_first


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as before


@pytest.mark.anyio
async def test_the_first_job_settles_the_heap_once_even_when_it_fails() -> None:
    calls: list[str] = []
    freezes: list[int] = []

    async def handler(job: str) -> str:
        calls.append(job)
        freezes.append(gc.get_freeze_count())
        if job == "boom":
            raise RuntimeError(job)
        return job.upper()

    run = settle_after_first(handler)
    with pytest.raises(RuntimeError):
        await run("boom")
    frozen = gc.get_freeze_count()
    assert freezes == [0]  # settled after the first call, not before
    assert frozen > 1000

    assert await run("two") == "TWO"
    assert gc.get_freeze_count() == frozen  # once
    assert calls == ["boom", "two"]
