"""Deploy locks of a worker whose process has certainly ended: released at once (to
the oldest waiter in line) instead of held until their TTL runs out."""

from __future__ import annotations

import structlog

from shared.coord.lockbook import MANUAL_TASK, LockBook

log = structlog.get_logger("locks")


async def release_locks_of_ended(book: LockBook, worker_id: str, pid: int) -> list[str]:
    """Release every deploy lock that ``worker_id`` took in process ``pid``; returns the
    services released. Each release carries the holder's token, so a lock that changed
    hands meanwhile is left alone; a person's manual lock is never touched."""
    released: list[str] = []
    for record in await book.held_locks():
        if record.owner != worker_id or record.pid != pid or record.task == MANUAL_TASK:
            continue
        actor = f"recovery:{worker_id}"
        if await book.release([record.service], token=record.token, actor=actor):
            released.append(record.service)
            log.warning("lock.released_for_ended_worker", service=record.service, worker=worker_id)
    return released
