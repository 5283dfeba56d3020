"""shared/keys.py: every key is hash-tagged with its namespace."""

from __future__ import annotations

import pytest

from shared.keys import Keys


def all_keys(k: Keys) -> list[str]:
    return [
        k.ingest,
        k.queue,
        k.delayed,
        k.dead,
        k.workers,
        k.jobs,
        k.events,
        k.staging,
        k.fleet,
        k.active("w1"),
        k.worker("w1"),
        k.job("j1"),
        k.logs("j1"),
        k.lock("svc"),
        k.fence("svc"),
        k.site("svc"),
        k.seq("svc"),
        k.idem("abc"),
    ]


@pytest.mark.parametrize("namespace", ["buildq", "team-a"])
def test_every_key_starts_with_the_namespace_hash_tag(namespace: str) -> None:
    for key in all_keys(Keys(namespace)):
        assert key.startswith("{" + namespace + "}:"), key


def test_default_namespace_is_buildq() -> None:
    assert Keys().queue == "{buildq}:queue"
    assert Keys().job("abc") == "{buildq}:job:abc"


def test_keys_within_a_namespace_are_distinct() -> None:
    keys = all_keys(Keys("ns"))

    assert len(set(keys)) == len(keys)


def test_distinct_namespaces_never_share_a_key() -> None:
    a, b = set(all_keys(Keys("a"))), set(all_keys(Keys("b")))

    assert a.isdisjoint(b)


def test_namespace_that_is_a_prefix_of_another_does_not_collide() -> None:
    """``{ab}`` vs ``{a}``: the closing brace keeps them apart."""
    assert set(all_keys(Keys("a"))).isdisjoint(all_keys(Keys("ab")))
    assert not Keys("ab").queue.startswith(Keys("a").prefix)
