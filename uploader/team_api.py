"""Team coordination routes: manual deploy locks and staging claims.

The owner of a lock or claim is the caller's identity (``uploader/auth.py``): an
``owner`` in the body or query may only repeat it (403 when it names someone else).
Releasing someone else's lock or claim takes the admin role and ``force=true``; a
lock held by a deploy (a deployer's worker id) can be released by nothing less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.coord.lockbook import LockBook, LockRecord, validate_owner
from shared.coord.staging import Staging
from shared.core.names import validate_name
from uploader.access import Caller
from uploader.auth import Action, Identity, require
from uploader.jsonbody import ParsedJSONRoute
from uploader.ownership import (
    ReleaseRefused,
    describe_claim,
    describe_lock,
    release_claim,
    release_lock,
)
from uploader.state import Services, services

log = structlog.get_logger("team")
router = APIRouter(tags=["team"], route_class=ParsedJSONRoute)
MAX_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Team:
    """The lock book and staging claims over the process's Redis client."""

    svc: Services
    locks: LockBook
    staging: Staging


def team(request: Request) -> Team:
    """FastAPI dependency: the process's :class:`Team`, built once per Services."""
    svc = services(request)
    cached: Team | None = getattr(request.app.state, "team", None)
    if cached is None or cached.svc is not svc:
        events_max = svc.settings.events_max_entries
        cached = Team(
            svc,
            LockBook(svc.redis, svc.keys, events_max=events_max),
            Staging(svc.redis, svc.keys, events_max=events_max),
        )
        request.app.state.team = cached
    return cached


TeamDep = Annotated[Team, Depends(team)]


class LockRequest(BaseModel):
    """``PUT /locks/{service}`` body."""

    model_config = ConfigDict(extra="forbid")
    owner: str | None = Field(None, min_length=1, max_length=64)  # the caller, if given
    ttl_s: int | None = Field(None, ge=1, le=MAX_TTL_S)
    reason: str = Field("", max_length=500)
    user_id: str | None = Field(None, max_length=64)


class ClaimRequest(BaseModel):
    """``PUT /staging/{env}`` body."""

    model_config = ConfigDict(extra="forbid")
    owner: str | None = Field(None, min_length=1, max_length=64)  # the caller, if given
    branch: str | None = Field(None, max_length=255)
    ttl_s: int | None = Field(None, ge=1, le=MAX_TTL_S)
    user_id: str | None = Field(None, max_length=64)


def lock_view(record: LockRecord) -> dict[str, Any]:
    """A lock record as the API shows it."""
    return record.public()


def owner_of(who: Identity, given: str | None) -> str:
    """The caller's name as owner; 403 when ``given`` names someone else."""
    if given is not None and given != who.name:
        raise HTTPException(403, f"you are {who.name}: owner={given[:64]!r} names someone else")
    return validate_owner(who.name)


@router.get("/locks")
async def list_locks(t: TeamDep) -> list[dict[str, Any]]:
    """Every lock held now (deploys and people), oldest first."""
    return [lock_view(r) for r in await t.locks.held_locks()]


@router.get("/locks/{service}")
async def get_lock(service: str, t: TeamDep) -> dict[str, Any]:
    """Who holds ``service``'s lock, who had it last, and the current fence."""
    validate_name(service)
    holder = await t.locks.holder(service)
    last = await t.locks.last_holder(service)
    return {
        "service": service,
        "holder": lock_view(holder) if holder else None,
        "last": lock_view(last) if last else None,
        "fence": await t.locks.fence(service),
    }


@router.put("/locks/{service}")
async def put_lock(service: str, body: LockRequest, t: TeamDep, who: Caller) -> dict[str, Any]:
    """Take (or renew, for the same owner) a manual lock; 409 if held by another."""
    owner = owner_of(who, body.owner)
    require(who, Action.LOCK, validate_name(service))
    ttl_s = body.ttl_s or t.svc.settings.lock_default_ttl_s
    taken, record = await t.locks.acquire_manual(
        service,
        owner=owner,
        ttl_ms=ttl_s * 1000,
        reason=body.reason,
        user_id=body.user_id,
    )
    if not taken:
        raise HTTPException(409, describe_lock(record))
    return lock_view(record)


@router.delete("/locks/{service}")
async def delete_lock(
    service: str,
    t: TeamDep,
    who: Caller,
    owner: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    force: bool = False,
) -> dict[str, Any]:
    """Release a lock: only its owner, or an admin with ``force=true``."""
    me = owner_of(who, owner)
    require(who, Action.FORCE if force else Action.LOCK, validate_name(service))
    try:
        record = await release_lock(t.locks, service, me, force=force)
    except ReleaseRefused as exc:
        raise HTTPException(exc.status, exc.message) from None
    if force and record.owner != me:
        log.warning("lock.forced", service=service, owner=record.owner, by=me, task=record.task)
    return {"released": True, "lock": lock_view(record)}


@router.get("/staging")
async def list_claims(t: TeamDep) -> list[dict[str, Any]]:
    """Every unexpired staging claim."""
    return [c.public() for c in await t.staging.claims()]


@router.put("/staging/{env}")
async def put_claim(env: str, body: ClaimRequest, t: TeamDep, who: Caller) -> dict[str, Any]:
    """Claim (or renew, for the same owner) an environment; 409 if claimed by another."""
    owner = owner_of(who, body.owner)
    require(who, Action.CLAIM)
    ttl_s = body.ttl_s or t.svc.settings.claim_default_ttl_s or None
    won, claim = await t.staging.claim(
        validate_name(env, "environment"),
        owner=owner,
        branch=body.branch,
        ttl_s=ttl_s,
        user_id=body.user_id,
    )
    if not won:
        raise HTTPException(409, describe_claim(claim))
    return claim.public()


@router.delete("/staging/{env}")
async def delete_claim(
    env: str,
    t: TeamDep,
    who: Caller,
    owner: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    force: bool = False,
) -> dict[str, Any]:
    """Release a claim: only its owner, or an admin with ``force=true``."""
    me = owner_of(who, owner)
    require(who, Action.FORCE if force else Action.CLAIM)
    try:
        claim = await release_claim(t.staging, validate_name(env, "environment"), me, force=force)
    except ReleaseRefused as exc:
        raise HTTPException(exc.status, exc.message) from None
    return {"released": True, "claim": claim.public()}
