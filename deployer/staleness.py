"""Never build what is already stale: the check a deployer makes when it has taken a
job, before it fetches anything, and again once it holds the service's deploy lock.

A job is **superseded** at once when a newer submission of its service (a higher
``seq``) has not ended (it is being cloned, queued, waiting or running), or is live.
Previews are services of their own (``<service>--<branch>``, ``uploader/hooks.py``),
with their own ``seq``: a preview never supersedes production nor another branch's
preview. The newer job that did it is named in ``superseded_by``; if that job later
fails, the older one stays superseded (as BullMQ's deduplication does): a deploy is a
request for the newest state, and the newest submission said what that is.

A job **pinned to a commit** (its ``ref`` is the full commit id it resolved to) whose
commit is the live deployment's, from the same repository and directory with the
same settings (an identical build override or none, and the same secrets delivered,
compared by a digest kept only in Redis), ends ``live`` at once with ``served_by``
naming the live deployment: nothing is fetched, built or uploaded. A branch ref is
always built: the branch may be redeployed on purpose (a build hook pulling new
content into the same commit).

The check reads one script (``shared/redis/lua/stale.lua``) over
``{ns}:submissions:<service>`` (job id -> seq, written by ``submit.lua``), each newer
job's record and the service's live alias; the decision is :func:`decide`, pure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from shared.coord.secrets import SecretStore
from shared.core.settings import Settings
from shared.engine.jobs import JobRecord, JobStore, Status
from shared.engine.replies import STALE, StaleReply
from shared.redis.keys import Keys
from shared.redis.scripts import Scripts

NEWER_READ_MAX = 64
"""Newer submissions read per check, newest first. Past that many newer ended ones
the job is built (safe: promotion only moves forward), never wrongly superseded."""


class StaleVerdict(StrEnum):
    """What a taken job does next."""

    BUILD = "build"
    SUPERSEDED = "superseded"  # a newer submission will deploy (or has deployed)
    SERVED = "served"  # its exact commit is live already


@dataclass(frozen=True, slots=True)
class Newer:
    """A newer submission of the service that has not ended."""

    id: str
    seq: int
    status: str


@dataclass(frozen=True, slots=True)
class Live:
    """The service's live deployment, with its record's fields ('' once expired)."""

    id: str
    seq: int
    commit: str
    repo_url: str
    root_dir: str
    settings_digest: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``stale.lua`` read: the newest newer submission that has not ended, and
    what is live."""

    newer: Newer | None
    live: Live | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict, the job it names (``superseded_by`` / ``served_by``) and why."""

    verdict: StaleVerdict
    by: str = ""
    reason: str = ""


def pinned(record: JobRecord) -> bool:
    """Whether the job asked for an exact commit: its ref is the commit it resolved to."""
    return bool(record.commit) and (record.ref or "").lower() == (record.commit or "").lower()


def decide(record: JobRecord, settings_digest: str, facts: Facts) -> Decision:
    """Supersede, serve from the live deployment, or build; pure. A superseded job
    names the newest of the newer submissions that can still deploy or have."""
    newer, live = facts.newer, facts.live
    if live is None or live.id == record.id:
        live_newer = None  # a re-run of the live job itself promotes idempotently
    else:
        live_newer = live if live.seq > record.seq else None
    if newer is not None and (live_newer is None or newer.seq > live_newer.seq):
        reason = f"submission {newer.seq} ({newer.id}) is newer and {newer.status}"
        return Decision(StaleVerdict.SUPERSEDED, newer.id, reason)
    if live is None or live.id == record.id:
        return Decision(StaleVerdict.BUILD)
    if (
        newer is None
        and pinned(record)
        and live.commit == record.commit
        and live.repo_url == record.repo_url
        and live.root_dir == (record.root_dir or "")
        and settings_digest != ""
        and live.settings_digest == settings_digest
    ):
        reason = f"commit {record.commit} is live already as {live.id}"
        return Decision(StaleVerdict.SERVED, live.id, reason)
    if live_newer is not None:
        reason = f"submission {live.seq} ({live.id}) is newer and live"
        return Decision(StaleVerdict.SUPERSEDED, live.id, reason)
    return Decision(StaleVerdict.BUILD)


def digest(
    build: dict[str, Any] | None, secrets: list[tuple[str, int]], secrets_of: str | None = None
) -> str:
    """The settings a build ran with, as one digest: its override (command and env
    values included) and each secret's name and update time, and whose they are when
    not its own service's (a webhook preview's parent)."""
    document: dict[str, Any] = {"build": build, "secrets": sorted(secrets)}
    if secrets_of is not None:
        document["secrets_of"] = secrets_of
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def decode(reply: Any) -> Facts:
    """A ``stale.lua`` reply as :class:`Facts`."""
    found = STALE(reply[0]) is StaleReply.NEWER
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply[1:]]
    newer_id, newer_seq, status, live_id, live_seq, commit, repo_url, root_dir, dig = values
    newer = Newer(newer_id, int(newer_seq), status) if found else None
    if not live_id:
        return Facts(newer, None)
    return Facts(newer, Live(live_id, int(live_seq or 0), commit, repo_url, root_dir, dig))


class Staleness:
    """Reads the facts of one taken job and decides; one script call, plus the
    secrets' names and the build override for the digest."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings, store: JobStore) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.secrets = SecretStore(redis, keys, settings)
        self.scripts = Scripts(redis)

    async def settings_digest(self, record: JobRecord) -> str:
        """The job's settings digest; '' (matches nothing) when its override is gone."""
        override = None
        if record.build:
            override = await self.store.build_override(record.id)
            if override is None:
                return ""
        infos = await self.secrets.names(record.secrets_of or record.service)
        return digest(override, [(i.name, i.updated_at) for i in infos], record.secrets_of)

    async def facts(self, record: JobRecord, settings_digest: str) -> Facts:
        k = self.keys
        reply = await self.scripts.stale(
            keys=[k.submissions(record.service), k.site(record.service), k.job(record.id)],
            args=[k.job(""), record.seq, settings_digest, NEWER_READ_MAX],
        )
        return decode(reply)

    async def check(self, record: JobRecord) -> Decision:
        """Whether ``record`` (taken, not yet built) should be built at all."""
        settings_digest = await self.settings_digest(record)
        return decide(record, settings_digest, await self.facts(record, settings_digest))


def ended_fields(record: JobRecord, decision: Decision, *, at_take: bool) -> dict[str, str]:
    """The record fields of a job that ends without building: the job that made it so
    and, decided ``at_take``, no ``building`` phase at all (the take opened it, as the
    build stage's started status, but nothing was built: the transition deletes it).
    Decided after the lock wait, the phase keeps the time it waited."""
    field = "superseded_by" if decision.verdict is StaleVerdict.SUPERSEDED else "served_by"
    out = {field: decision.by}
    if at_take and Status.BUILDING.value in record.phases:
        out[f"-p:{Status.BUILDING.value}:start"] = ""
        out[f"-p:{Status.BUILDING.value}:end"] = ""
    return out
