"""The ChatOps commands: parse the slash command's text, act, answer in Slack's JSON.

Changes are answered ``in_channel`` (the team sees who locked what); errors, help and
read-only answers are ``ephemeral`` (only the caller sees them).

Who is asking is the identity ``BUILDQ_CHAT_USERS`` maps the workspace and user id to
(``uploader/auth.py``), never the display name: it owns locks and claims, and its role
decides what it may do. Unmapped users may only read (status, queue, locks, claims,
help).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.clock import format_ms
from shared.core.errors import ValidationError
from shared.core.names import validate_name
from shared.core.redaction import redact_url
from shared.engine.queue import read_counts
from shared.engine.workers import list_workers
from uploader.auth import Action, Identity, decide
from uploader.ownership import (
    ReleaseRefused,
    describe_claim,
    describe_lock,
    release_claim,
    release_lock,
)
from uploader.submit import Forbidden, RateLimited, Submission, submit
from uploader.team_api import Team

HELP = """buildq commands:
  lock <service> [reason]     take the deploy lock of a service (released after {ttl})
  unlock <service> [force]    release it (force: admins only)
  status [service]            locks and recent deployments
  locks                       who holds which deploy lock
  claim <env> [branch]        claim a staging environment
  release <env> [force]       release your claim (force: admins only)
  claims                      who has which environment
  queue                       queue length and workers
  deploy <repo-url> [service] deploy a repository
  help                        this text"""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The fields of a slash command that buildq uses."""

    platform: str
    team_id: str
    channel_id: str
    user_id: str
    user_name: str
    command: str
    text: str
    trigger_id: str

    @classmethod
    def from_form(cls, platform: str, form: Mapping[str, str]) -> ChatRequest:
        """Read a Slack or Mattermost slash-command form."""
        return cls(
            platform=platform,
            **{
                name: form.get(name, "")[:4000]
                for name in (
                    "team_id",
                    "channel_id",
                    "user_id",
                    "user_name",
                    "command",
                    "text",
                    "trigger_id",
                )
            },
        )


def in_channel(text: str) -> dict[str, str]:
    """An answer everyone in the channel sees."""
    return {"response_type": "in_channel", "text": text}


def ephemeral(text: str) -> dict[str, str]:
    """An answer only the caller sees."""
    return {"response_type": "ephemeral", "text": text}


def _at(ms: int | None) -> str:
    return format_ms(ms, utc=True)  # readers are in many time zones


def _forced(args: list[str]) -> bool:
    return len(args) > 1 and args[1].lower() in ("force", "--force")


class Refusal(Exception):
    """The caller may not do this; the message says why."""


def _allow(who: Identity | None, action: Action, service: str | None = None) -> Identity:
    """``who`` if it may do ``action`` (on ``service``), else :class:`Refusal`."""
    if who is None:
        raise Refusal(
            "your chat account is not mapped to a buildq identity (BUILDQ_CHAT_USERS): "
            "you may use status, queue, locks, claims and help."
        )
    reason = decide(who, action, service)
    if reason is not None:
        raise Refusal(reason + ".")
    return who


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds // 60} min"


async def _lock(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    service = validate_name(args[0]) if args else ""
    if not service:
        return ephemeral("usage: lock <service> [reason]")
    me = _allow(who, Action.LOCK, service).name
    ttl_s = t.svc.settings.lock_default_ttl_s
    taken, record = await t.locks.acquire_manual(
        service, owner=me, ttl_ms=ttl_s * 1000, reason=" ".join(args[1:]), user_id=chat.user_id
    )
    if not taken:
        return ephemeral(f"{describe_lock(record)} since {_at(record.acquired_at)}.")
    why = f": {record.reason}" if record.reason else ""
    return in_channel(f"{me} locked {service} until {_at(record.expires_at)}{why}")


async def _unlock(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    if not args:
        return ephemeral("usage: unlock <service> [force]")
    service, force = validate_name(args[0]), _forced(args)
    me = _allow(who, Action.FORCE if force else Action.LOCK, service).name
    try:
        record = await release_lock(t.locks, service, me, force=force)
    except ReleaseRefused as exc:
        return ephemeral(exc.message + ".")
    was = f" (forced; it was {record.owner}'s)" if record.owner != me else ""
    return in_channel(f"{me} unlocked {service}{was}")


async def _claim(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    if not args:
        return ephemeral("usage: claim <env> [branch]")
    me = _allow(who, Action.CLAIM).name
    won, claim = await t.staging.claim(
        validate_name(args[0], "environment"),
        owner=me,
        branch=args[1] if len(args) > 1 else None,
        ttl_s=t.svc.settings.claim_default_ttl_s or None,
        user_id=chat.user_id,
    )
    if not won:
        return ephemeral(f"{describe_claim(claim)} since {_at(claim.claimed_at)}.")
    branch = f" for {claim.branch}" if claim.branch else ""
    until = f" until {_at(claim.expires_at)}" if claim.expires_at else ""
    return in_channel(f"{me} claimed {claim.env}{branch}{until}")


async def _release(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    if not args:
        return ephemeral("usage: release <env> [force]")
    env, force = validate_name(args[0], "environment"), _forced(args)
    me = _allow(who, Action.FORCE if force else Action.CLAIM).name
    try:
        claim = await release_claim(t.staging, env, me, force=force)
    except ReleaseRefused as exc:
        return ephemeral(exc.message + ".")
    was = f" (forced; it was {claim.owner}'s)" if claim.owner != me else ""
    return in_channel(f"{me} released {env}{was}")


async def _claims(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    claims = await t.staging.claims()
    if not claims:
        return ephemeral("No environment is claimed.")
    return ephemeral("\n".join(f"{describe_claim(c)} (until {_at(c.expires_at)})" for c in claims))


async def _status(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    service = validate_name(args[0]) if args else None
    lines: list[str] = []
    if service:
        holder = await t.locks.holder(service)
        last = None if holder else await t.locks.last_holder(service)
        if holder:
            lines.append(f"{describe_lock(holder)} until {_at(holder.expires_at)}")
        else:
            lines.append(f"{service} is not locked" + (f" (last: {last.owner})" if last else ""))
    else:
        held = await t.locks.held_locks()
        lines += [f"{describe_lock(r)} until {_at(r.expires_at)}" for r in held] or ["no locks"]
    for job in await t.svc.store.recent(limit=5, service=service):
        lines.append(f"{job.id} {job.status} {job.service} {job.url or ''}".rstrip())
    return ephemeral("\n".join(lines))


async def _locks(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    held = await t.locks.held_locks()
    if not held:
        return ephemeral("No lock is held.")
    return ephemeral("\n".join(f"{describe_lock(r)} until {_at(r.expires_at)}" for r in held))


async def _queue(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    counts = await read_counts(t.svc.redis, t.svc.keys)
    workers = await list_workers(t.svc.redis, t.svc.keys)
    busy = sum(w.busy for w in workers)
    return ephemeral(
        f"queue {counts.build}, cloning {counts.ingest}, delayed {counts.delayed}, "
        f"dead {counts.dead}; "
        f"{len(workers)} workers, {busy} busy"
    )


async def _deploy(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    if not args:
        return ephemeral("usage: deploy <repo-url> [service]")
    url = args[0]
    if url.startswith("<") and url.endswith(">"):  # Slack's link markup: <url|label>
        url = url[1:-1].split("|", 1)[0]
    me = _allow(who, Action.READ)  # a mapped identity; submit checks its role and services
    service = args[1] if len(args) > 1 else None
    try:
        receipt = await submit(t.svc, me, Submission(url, service))
    except Forbidden as exc:
        return ephemeral(f"{exc}.")
    except RateLimited as exc:
        return ephemeral(
            f"more than {exc.limit} deploys per minute for {me.name}; "
            f"retry in {exc.retry_after_s} s."
        )
    job_id, service = receipt.job_id, receipt.service
    link = f"{t.svc.settings.api_url.rstrip('/')}/deployments/{job_id}"
    return in_channel(f"{me.name} is deploying {redact_url(url)} as {service}: job {job_id} {link}")


async def _help(
    t: Team, who: Identity | None, chat: ChatRequest, args: list[str]
) -> dict[str, str]:
    return ephemeral(HELP.format(ttl=_hours(t.svc.settings.lock_default_ttl_s)))


Handler = Callable[[Team, Identity | None, ChatRequest, list[str]], Awaitable[dict[str, str]]]
COMMANDS: dict[str, Handler] = {
    "lock": _lock,
    "unlock": _unlock,
    "status": _status,
    "locks": _locks,
    "claim": _claim,
    "release": _release,
    "claims": _claims,
    "queue": _queue,
    "deploy": _deploy,
    "help": _help,
}


async def execute(chat: ChatRequest, t: Team, who: Identity | None) -> dict[str, Any]:
    """Run the command in ``chat.text`` as ``who`` (None: an unmapped user, who may only
    read); refusals are ephemeral."""
    words = chat.text.split()
    verb = words[0].lower() if words else "help"
    handler = COMMANDS.get(verb)
    if handler is None:
        return ephemeral(
            f"unknown command {verb[:40]!r}.\n" + (await _help(t, who, chat, []))["text"]
        )
    try:
        return await handler(t, who, chat, words[1:])
    except (ValidationError, Refusal) as exc:
        return ephemeral(str(exc))
