"""What the coordination Lua scripts answer, as enums; each script's codes in one table.

The wrappers in :mod:`shared.coord.sites`, :mod:`shared.coord.lockbook` and
:mod:`shared.coord.staging` decode every reply with these tables;
``tests/unit/test_lua_replies.py`` checks that each code a script can return is
mapped here.
"""

from __future__ import annotations

from enum import StrEnum

from shared.redis.replies import ReplyTable


class Verdict(StrEnum):
    """What a promotion attempt (``promote.lua``) did."""

    PROMOTED = "promoted"
    SUPERSEDED = "superseded"  # a newer (or the same) submission is already live
    FENCED = "fenced"  # the caller's fencing token is no longer current
    ENDED = "ended"  # the job has ended (e.g. cancelled) and never goes live


class RolledBack(StrEnum):
    """What a rollback attempt (``rollback.lua``) did."""

    ROLLED_BACK = "rolled_back"
    MOVED = "moved"  # the live deployment is no longer the one the caller chose from
    ALREADY_LIVE = "already_live"


class Released(StrEnum):
    """What a release by owner (or forced) did: ``lock_release.lua`` in its owner and
    force modes, and ``staging_release.lua``."""

    RELEASED = "released"
    NOT_HELD = "not_held"
    NOT_OWNER = "not_owner"


class AcquireReply(StrEnum):
    """What ``lock_acquire.lua`` did."""

    TAKEN = "taken"  # every service, each with a fresh fence
    HANDED_OVER = "handed_over"  # released to this token while it waited in line
    RENEWED = "renewed"  # its owner renewed a lock it holds
    HELD = "held"  # someone else holds one of the services


class ExtendReply(StrEnum):
    """What ``lock_extend.lua`` did."""

    EXTENDED = "extended"  # every lock still carried the token
    LOST = "lost"  # some lock no longer does; none was extended


class WithdrawReply(StrEnum):
    """What ``lock_withdraw.lua`` did."""

    HANDED_OVER = "handed_over"  # the lock was handed to us before we left the line
    WITHDRAWN = "withdrawn"


class ClaimReply(StrEnum):
    """What ``staging_claim.lua`` did."""

    CLAIMED = "claimed"  # claimed, or renewed by its owner
    HELD = "held"  # someone else holds an unexpired claim


PROMOTE = ReplyTable(
    "promote", {1: Verdict.PROMOTED, 0: Verdict.SUPERSEDED, -1: Verdict.FENCED, -2: Verdict.ENDED}
)
ROLLBACK = ReplyTable(
    "rollback",
    {1: RolledBack.ROLLED_BACK, 0: RolledBack.MOVED, -1: RolledBack.ALREADY_LIVE},
)
LOCK_ACQUIRE = ReplyTable(
    "lock_acquire",
    {
        1: AcquireReply.TAKEN,
        3: AcquireReply.HANDED_OVER,
        2: AcquireReply.RENEWED,
        0: AcquireReply.HELD,
    },
)
LOCK_EXTEND = ReplyTable("lock_extend", {1: ExtendReply.EXTENDED, 0: ExtendReply.LOST})
# Owner and force modes; token mode answers with a count of released locks instead.
LOCK_RELEASE = ReplyTable(
    "lock_release", {1: Released.RELEASED, 0: Released.NOT_HELD, -1: Released.NOT_OWNER}
)
LOCK_WITHDRAW = ReplyTable(
    "lock_withdraw", {1: WithdrawReply.HANDED_OVER, 0: WithdrawReply.WITHDRAWN}
)
STAGING_CLAIM = ReplyTable("staging_claim", {1: ClaimReply.CLAIMED, 0: ClaimReply.HELD})
STAGING_RELEASE = ReplyTable(
    "staging_release", {1: Released.RELEASED, 0: Released.NOT_HELD, -1: Released.NOT_OWNER}
)

TABLES = (
    PROMOTE,
    ROLLBACK,
    LOCK_ACQUIRE,
    LOCK_EXTEND,
    LOCK_RELEASE,
    LOCK_WITHDRAW,
    STAGING_CLAIM,
    STAGING_RELEASE,
)
