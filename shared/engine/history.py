"""What outlives Redis: when a job ends, its final record (``deployments/<id>.json``)
and its whole log stream (``logs/<id>.jsonl``, one entry per line) are copied to S3;
the log is read back from there once the stream has expired, so
``GET /deployments/{id}/logs`` answers the same for both."""

from __future__ import annotations

import json
import re

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.core.errors import StorageError
from shared.engine.jobs import JobRecord
from shared.engine.logs import LogEntry, entry_key, read_log
from shared.redis.keys import Keys
from shared.storage.s3 import ObjectNotFound, Storage, record_key

log = structlog.get_logger("history")

JOB_ID = re.compile(r"[0-9a-f]{20}")
MAX_ARCHIVE_BYTES = 64 << 20  # a stream is capped far below this; refuse anything bigger


def log_key(job_id: str) -> str:
    """Where an ended job's log is kept."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id[:40]!r}")
    return f"logs/{job_id}.jsonl"


def encode(entries: list[LogEntry]) -> bytes:
    rows = (
        json.dumps({"id": e.id, "kind": e.kind, "text": e.text, "status": e.status})
        for e in entries
    )
    return "".join(row + "\n" for row in rows).encode()


def decode(data: bytes) -> list[LogEntry]:
    """The entries of an archive; ValueError if it is not one."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ValueError("log archive too large")
    entries = []
    for line in data.decode().splitlines():
        row = json.loads(line)
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("id", "kind", "text")
        ):
            raise ValueError("not a log archive entry")
        status = row.get("status")
        entries.append(
            LogEntry(
                row["id"], row["kind"], row["text"], status if isinstance(status, str) else None
            )
        )
    return entries


async def archive_log(redis: Redis, keys: Keys, storage: Storage, job_id: str) -> int:
    """Copy an ended job's whole stream to S3; returns the entries kept."""
    entries = await read_log(redis, keys, job_id, count=1_000_000)
    await storage.put_bytes(log_key(job_id), encode(entries), mime="application/x-ndjson")
    return len(entries)


async def archived_log(storage: Storage, job_id: str, *, after: str = "0") -> list[LogEntry] | None:
    """The archived entries after ``after`` (an entry id); None if nothing is archived."""
    try:
        data, _ = await storage.get(log_key(job_id))
    except ObjectNotFound:
        return None
    entries = decode(data)
    if after in ("0", "0-0", "-"):
        return entries
    cursor = entry_key(after)
    return [e for e in entries if entry_key(e.id) > cursor]


async def keep_ended(redis: Redis, keys: Keys, storage: Storage, raw: dict[str, str]) -> None:
    """The consumers' end hook: save an ended job's record and log to S3. A storage
    or Redis fault is logged, never raised: the job has ended either way."""
    record = JobRecord.from_hash(raw)
    try:
        await storage.put_json(record_key(record.id), record.model_dump(mode="json"))
        await archive_log(redis, keys, storage, record.id)
    except (StorageError, RedisError) as exc:
        log.warning("job.history_not_saved", job_id=record.id, error=str(exc))
