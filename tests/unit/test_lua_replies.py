"""Every integer a Lua script can return is mapped by that script's reply table, in
the spirit of httpx's test that every lower-level exception is mapped: a new code
in a script without a member for it fails here, not in production."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.coord import replies as coord_replies
from shared.engine import replies as engine_replies
from shared.redis.replies import ReplyTable, UnknownReplyError
from shared.redis.scripts import source

LUA = Path(__file__).resolve().parents[2] / "shared" / "redis" / "lua"
# Scripts that are called; ``_name.lua`` files are only spliced into others.
SCRIPTS = sorted(p.stem for p in LUA.glob("*.lua") if not p.stem.startswith("_"))
TABLES: dict[str, ReplyTable] = {  # type: ignore[type-arg]
    t.script: t for t in (*engine_replies.TABLES, *coord_replies.TABLES)
}

COMMENT = re.compile(r"--[^\n]*")
RETURN_INT = re.compile(r"\breturn\s+(-?\d+)\b")  # return 0
RETURN_LIST = re.compile(r"\breturn\s*\{\s*(-?\d+)\s*[,}]")  # return {1, x} / return {0}
# local taken = {1} ... return taken (a list built up before it is returned)
LOCAL_LIST = re.compile(r"\blocal\s+(\w+)\s*=\s*\{\s*(-?\d+)\s*[,}]")


def returned_codes(script: str) -> set[int]:
    """The integer literals ``script`` (with its includes) can return as its code."""
    code = COMMENT.sub("", source(script))
    found = {int(m) for pattern in (RETURN_INT, RETURN_LIST) for m in pattern.findall(code)}
    for name, value in LOCAL_LIST.findall(code):
        if re.search(rf"\breturn\s+{name}\b", code):
            found.add(int(value))
    return found


def test_every_script_has_a_reply_table_and_every_table_a_script() -> None:
    assert set(TABLES) == set(SCRIPTS)
    assert len(TABLES) == len(engine_replies.TABLES) + len(coord_replies.TABLES)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_code_a_script_returns_is_mapped_by_its_table(script: str) -> None:
    codes = returned_codes(script)
    assert codes, f"{script}.lua returns no integer code: the parser missed its replies"
    unmapped = codes - set(TABLES[script].codes)
    assert not unmapped, f"{script}.lua returns {sorted(unmapped)} but its table has no member"


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_table_maps_a_code_its_script_never_returns(script: str) -> None:
    stale = set(TABLES[script].codes) - returned_codes(script)
    assert not stale, f"{script}.lua never returns {sorted(stale)}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_table_reads_into_one_enum_with_a_member_per_code(script: str) -> None:
    members = list(TABLES[script].codes.values())
    assert len({type(m) for m in members}) == 1
    assert len(set(members)) == len(members), "two codes read as the same member"


def test_a_reply_is_decoded_from_what_redis_sends() -> None:
    table = engine_replies.TRANSITION
    assert table(1) is engine_replies.Moved.CHANGED
    assert table(b"-1") is engine_replies.Moved.UNKNOWN
    assert table("2") is engine_replies.Moved.NOT_THERE


def test_an_unmapped_code_is_an_error_naming_the_script() -> None:
    with pytest.raises(UnknownReplyError, match=r"promote\.lua replied 7"):
        coord_replies.PROMOTE(7)


def test_the_parser_sees_both_return_forms() -> None:
    assert returned_codes("permit") == {0, 1}  # return 1 / return 0
    assert returned_codes("promote") == {1, 0, -1, -2}  # return {1} / return {-2, status}
    assert 1 in returned_codes("lock_acquire")  # local taken = {1} ... return taken
