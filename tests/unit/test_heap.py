"""Settling the heap: a collection, then everything still alive is frozen out of
later full collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.core.heap import settle


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as before


def test_settling_collects_cycles_then_freezes_what_is_alive() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    gc.disable()  # no automatic pass may run between making the garbage and settling
    try:
        dead = weakref.ref(Node())
        assert dead() is not None
        settle()
    finally:
        gc.enable()

    assert dead() is None
    assert gc.get_freeze_count() > 1000
