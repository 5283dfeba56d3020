"""Reading a Lua script's integer reply codes: one table per script, code -> enum member.

Each script in ``lua/`` answers with a bare integer (or a list that starts with
one) whose meaning is its own: 0 is "already ended" for a transition but "not
held" for a release. The one function that calls a script decodes its code with
that script's :class:`ReplyTable`; nothing above it sees the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from shared.core.errors import PermanentError

E = TypeVar("E", bound=Enum)


class UnknownReplyError(PermanentError):
    """A script answered with a code its table does not map: Lua and Python disagree
    (a bug; retrying cannot help)."""


@dataclass(frozen=True, slots=True)
class ReplyTable(Generic[E]):
    """The reply codes of script ``script`` (``lua/<script>.lua``) and what they mean."""

    script: str
    codes: Mapping[int, E]

    def __call__(self, code: Any) -> E:
        """The member for ``code`` (an int, or the digits Redis sent)."""
        value = int(code)
        try:
            return self.codes[value]
        except KeyError:
            raise UnknownReplyError(
                f"{self.script}.lua replied {value}, which no member maps"
            ) from None
