"""What the engine's Lua scripts answer: enums, each script's codes in one table, and
the results the store's wrappers return.

The wrappers in :mod:`shared.engine.jobs` and :mod:`shared.engine.fleet` decode
every reply with these tables; ``tests/unit/test_lua_replies.py`` checks that each
code a script can return is mapped here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.redis.replies import ReplyTable


class Submitted(StrEnum):
    """What ``submit.lua`` did."""

    CREATED = "created"  # a new job: {1, seq}
    REPEATED = "repeated"  # the idempotency key was seen: {0, first job's id}


class Moved(StrEnum):
    """What a transition (``transition.lua``, ``take.lua``) did."""

    CHANGED = "changed"
    ENDED = "ended"  # the job had already ended and never changes again
    NOT_THERE = "not_there"  # a strict move found it gone from its source
    UNKNOWN = "unknown"  # no such job (never submitted, or expired)


class CancelReply(StrEnum):
    """What ``cancel.lua`` did."""

    CANCELLED = "cancelled"  # {1, previous status}
    ENDED = "ended"  # it had already ended: {0, status}
    UNKNOWN = "unknown"


class ReviveReply(StrEnum):
    """What ``revive.lua`` did."""

    REVIVED = "revived"  # {1, status it resumes at}
    NOT_REVIVABLE = "not_revivable"  # neither failed nor cancelled: {0, status}
    UNKNOWN = "unknown"


class StaleReply(StrEnum):
    """What ``stale.lua`` found for a taken job."""

    NEWER = "newer"  # a newer submission has not ended: {1, its id, seq, status, live…}
    NONE_NEWER = "none_newer"  # none has: {0, '', '', '', the live deployment's fields}


class PermitReply(StrEnum):
    """What ``permit.lua`` did for one slot."""

    GRANTED = "granted"
    REFUSED = "refused"


class Restored(StrEnum):
    """What a recovery script (``restore_job.lua``, ``restore_alias.lua``,
    ``raise_counter.lua``; ``shared/engine/restore.py``) did."""

    RESTORED = "restored"  # written: the job, the alias, or the counter raised
    KEPT = "kept"  # Redis already had it (or a newer or higher value): nothing changed


SUBMIT = ReplyTable("submit", {1: Submitted.CREATED, 0: Submitted.REPEATED})
_MOVES = {1: Moved.CHANGED, 0: Moved.ENDED, 2: Moved.NOT_THERE, -1: Moved.UNKNOWN}
TRANSITION = ReplyTable("transition", _MOVES)
TAKE = ReplyTable("take", _MOVES)  # its second element is a transition's reply
CANCEL = ReplyTable(
    "cancel", {1: CancelReply.CANCELLED, 0: CancelReply.ENDED, -1: CancelReply.UNKNOWN}
)
REVIVE = ReplyTable(
    "revive", {1: ReviveReply.REVIVED, 0: ReviveReply.NOT_REVIVABLE, -1: ReviveReply.UNKNOWN}
)
PERMIT = ReplyTable("permit", {1: PermitReply.GRANTED, 0: PermitReply.REFUSED})
STALE = ReplyTable("stale", {1: StaleReply.NEWER, 0: StaleReply.NONE_NEWER})

_RESTORES = {1: Restored.RESTORED, 0: Restored.KEPT}
RESTORE_JOB = ReplyTable("restore_job", _RESTORES)
RESTORE_ALIAS = ReplyTable("restore_alias", _RESTORES)
RAISE_COUNTER = ReplyTable("raise_counter", _RESTORES)

TABLES = (
    SUBMIT,
    TRANSITION,
    TAKE,
    CANCEL,
    REVIVE,
    PERMIT,
    STALE,
    RESTORE_JOB,
    RESTORE_ALIAS,
    RAISE_COUNTER,
)


@dataclass(frozen=True, slots=True)
class Transition:
    """What a transition did; unpacks as ``(changed, record)``."""

    reply: Moved
    status: str | None = None  # the job's status when it did not change
    record: dict[str, str] = field(default_factory=dict)  # with ``fetch``

    @property
    def changed(self) -> bool:
        return self.reply is Moved.CHANGED

    def __iter__(self) -> Iterator[Any]:
        record = self.record if self.changed else ({"status": self.status} if self.status else {})
        return iter((self.changed, record))


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job claimed and started by ``JobStore.take``."""

    job_id: str
    started: Transition


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What ``JobStore.cancel`` did; ``status`` is the one it was cancelled from (or
    ended in)."""

    reply: CancelReply
    status: str | None = None

    @property
    def changed(self) -> bool:
        return self.reply is CancelReply.CANCELLED


@dataclass(frozen=True, slots=True)
class Revival:
    """What ``JobStore.revive`` did; ``status`` is the one it resumes at (or is in)."""

    reply: ReviveReply
    status: str | None = None

    @property
    def changed(self) -> bool:
        return self.reply is ReviveReply.REVIVED
