"""The S3 copies that let buildq survive Redis losing its data, and reading them back.

Written as things happen: each job at acceptance (``accepted/<service>/<seq>-<id>.json``,
here, from the uploader's submit path) and at its end (``deployments/<id>.json``,
:func:`shared.engine.history.keep_ended`); each service's live alias at promotion and
rollback (``aliases/<service>.json``, with its seq and fence). Read back by
``buildq doctor --recover`` (:mod:`shared.cli.recover`).

The acceptance copy has its own key instead of sharing ``deployments/<id>.json``: a
job that ends fast could otherwise have its final record overwritten by its
acceptance write landing late. Its name carries the service and seq, so one listing
tells the highest seq each service handed out without reading any object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from pydantic import ValidationError as ModelError

from shared.core.errors import StorageError
from shared.engine.records import JobRecord
from shared.storage.objects import ObjectNotFound, Storage

log = structlog.get_logger("durable")

ACCEPTED_PREFIX = "accepted/"
ENDED_PREFIX = "deployments/"
ALIAS_PREFIX = "aliases/"
READ_CONCURRENCY = 16  # objects read at once while recovering

_ACCEPTED = re.compile(r"accepted/([a-z0-9][a-z0-9-]{0,62})/([0-9]{1,18})-([0-9a-f]{20})\.json")
_ENDED = re.compile(r"deployments/([0-9a-f]{20})\.json")


def accepted_key(service: str, seq: int, job_id: str) -> str:
    """Where a job's record is kept from its acceptance on."""
    key = f"{ACCEPTED_PREFIX}{service}/{seq}-{job_id}.json"
    if not _ACCEPTED.fullmatch(key):
        raise ValueError(f"not a job's service, seq and id: {key[:120]!r}")
    return key


@dataclass(frozen=True, slots=True)
class AcceptedCopy:
    """One acceptance copy, as its key names it."""

    key: str
    service: str
    seq: int
    job_id: str


@dataclass(frozen=True, slots=True)
class AliasCopy:
    """The durable copy of one service's live alias."""

    service: str
    job_id: str
    seq: int
    fence: int | None
    promoted_at: int


async def keep_accepted(storage: Storage, record: JobRecord) -> bool:
    """Save a just-accepted job's record; False (logged) when S3 refused. The job is
    in Redis either way: only a recovery after Redis loses it would miss it."""
    try:
        key = accepted_key(record.service, record.seq, record.id)
        await storage.put_json(key, record.model_dump(mode="json"))
    except StorageError as exc:
        log.warning("job.acceptance_not_saved", job_id=record.id, error=str(exc))
        return False
    return True


async def accepted_copies(storage: Storage) -> list[AcceptedCopy]:
    """Every acceptance copy, from one listing (no object is read)."""
    found = []
    for obj in await storage.list_objects(ACCEPTED_PREFIX):
        match = _ACCEPTED.fullmatch(obj.key)
        if match is not None:
            found.append(AcceptedCopy(obj.key, match[1], int(match[2]), match[3]))
    return found


async def ended_ids(storage: Storage) -> set[str]:
    """The ids of every job whose final record S3 keeps."""
    objects = await storage.list_objects(ENDED_PREFIX)
    return {m[1] for m in (_ENDED.fullmatch(o.key) for o in objects) if m is not None}


async def read_record(storage: Storage, key: str) -> JobRecord | None:
    """The job record stored at ``key``; None if it is gone or is not one (logged)."""
    try:
        data, _ = await storage.get(key)
        return JobRecord.model_validate_json(data)
    except ObjectNotFound:
        return None
    except ModelError as exc:
        log.warning("job.copy_unreadable", key=key, error=str(exc).splitlines()[0])
        return None


async def read_records(storage: Storage, keys: Iterable[str]) -> list[JobRecord]:
    """The records at ``keys`` (unreadable ones left out), read a few at a time."""
    found: list[JobRecord] = []
    limiter = anyio.CapacityLimiter(READ_CONCURRENCY)

    async def one(key: str) -> None:
        async with limiter:
            record = await read_record(storage, key)
        if record is not None:
            found.append(record)

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(one, key)
    return found


def ended_key(job_id: str) -> str:
    """The final record's key (``shared.storage.s3.record_key``), for a listed id."""
    return f"{ENDED_PREFIX}{job_id}.json"


async def alias_copies(storage: Storage) -> list[AliasCopy]:
    """Every service's durable alias; copies that are not one are logged and left out."""
    found = []
    for obj in await storage.list_objects(ALIAS_PREFIX):
        try:
            data, _ = await storage.get(obj.key)
        except ObjectNotFound:
            continue  # deleted since the listing
        try:
            alias = _alias(json.loads(data))
        except ValueError:
            alias = None
        if alias is None:
            log.warning("site.alias_copy_unreadable", key=obj.key)
        else:
            found.append(alias)
    return found


def _alias(raw: Any) -> AliasCopy | None:
    if not isinstance(raw, dict):
        return None
    service, job_id, seq = raw.get("service"), raw.get("id"), raw.get("seq")
    fence, promoted_at = raw.get("fence"), raw.get("promoted_at", 0)
    if not (isinstance(service, str) and isinstance(job_id, str) and isinstance(seq, int)):
        return None
    if not _is_int(seq):
        return None
    return AliasCopy(
        service,
        job_id,
        seq,
        fence if _is_int(fence) else None,
        promoted_at if _is_int(promoted_at) else 0,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
