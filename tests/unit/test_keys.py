"""shared/redis/keys.py: every key is hash-tagged with its namespace."""

from __future__ import annotations

import inspect

import pytest

from shared.redis.keys import Keys


def all_keys(k: Keys) -> list[str]:
    """Every key the Keys class can build, found by introspection so new keys are
    covered without editing this test."""
    keys = []
    for name in dir(Keys):
        if name.startswith("_") or name in {"namespace", "prefix"}:
            continue
        attr = getattr(Keys, name)
        if isinstance(attr, property):
            keys.append(getattr(k, name))
        elif callable(attr):
            params = list(inspect.signature(attr).parameters)[1:]
            args = [7 if p == "window" else f"{name}-arg" for p in params]
            keys.append(getattr(k, name)(*args))
    return keys


def test_introspection_finds_the_keys_of_the_design() -> None:
    found = all_keys(Keys("ns"))
    assert len(found) >= 25
    for key in ("{ns}:queue", "{ns}:lock:lock-arg", "{ns}:fence:fence-arg", "{ns}:permits"):
        assert key in found


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
