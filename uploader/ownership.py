"""Releasing a lock or a staging claim: one flow for HTTP and chat.

Only the holder may release, or an admin with force; a deploy's own lock only an
admin with force. The refusal carries the HTTP status and a message; chat shows the
message, the API answers with the status.
"""

from __future__ import annotations

from shared.coord.lockbook import MANUAL_TASK, LockBook, LockRecord, Released
from shared.coord.staging import Claim, Staging


class ReleaseRefused(Exception):
    """Not released: nothing is held (404) or the caller may not release it (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def describe_lock(record: LockRecord) -> str:
    """``web is locked by alice (reason)``, for conflicts and chat."""
    why = f" ({record.reason})" if record.reason else ""
    return f"{record.service} is locked by {record.owner}{why}"


def describe_claim(claim: Claim) -> str:
    """``staging is claimed by alice for main``."""
    branch = f" for {claim.branch}" if claim.branch else ""
    return f"{claim.env} is claimed by {claim.owner}{branch}"


def deploy_held(record: LockRecord) -> bool:
    """Whether ``record`` is a running deploy's lock (not a person's manual lock)."""
    return record.task != MANUAL_TASK


async def release_lock(locks: LockBook, service: str, me: str, *, force: bool) -> LockRecord:
    """Release ``service``'s lock as ``me``; the released record, or ReleaseRefused."""
    outcome, record = await locks.release_manual(service, owner=me, force=force)
    if outcome is Released.NOT_HELD or record is None:
        raise ReleaseRefused(404, f"{service} is not locked")
    if outcome is Released.NOT_OWNER:
        if deploy_held(record):
            message = f"{describe_lock(record)} for a running deploy; only an admin with force=true"
        else:
            message = (
                f"{describe_lock(record)}; only they (or an admin, with force=true) can unlock"
            )
        raise ReleaseRefused(403, message)
    return record


async def release_claim(staging: Staging, env: str, me: str, *, force: bool) -> Claim:
    """Release the claim on ``env`` as ``me``; the released claim, or ReleaseRefused."""
    outcome, claim = await staging.release(env, owner=me, force=force)
    if outcome is Released.NOT_HELD or claim is None:
        raise ReleaseRefused(404, f"{env} is not claimed")
    if outcome is Released.NOT_OWNER:
        raise ReleaseRefused(
            403, f"{describe_claim(claim)}; only they (or an admin, with force=true) can release"
        )
    return claim
