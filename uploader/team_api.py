"""Team coordination routes: manual deploy locks and staging claims.

Owners name themselves (``owner`` in the body or query); the API token, where set,
is what guards the API. ``force=true`` is honoured only for owners listed in
``BUILDQ_ADMINS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.lockbook import LockBook, LockRecord, Released, validate_owner
from shared.names import validate_name
from shared.staging import Claim, Staging
from uploader.state import Services, services

router = APIRouter(tags=["team"])
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
    owner: str = Field(min_length=1, max_length=64)
    ttl_s: int | None = Field(None, ge=1, le=MAX_TTL_S)
    reason: str = Field("", max_length=500)
    user_id: str | None = Field(None, max_length=64)


class ClaimRequest(BaseModel):
    """``PUT /staging/{env}`` body."""

    model_config = ConfigDict(extra="forbid")
    owner: str = Field(min_length=1, max_length=64)
    branch: str | None = Field(None, max_length=255)
    ttl_s: int | None = Field(None, ge=1, le=MAX_TTL_S)
    user_id: str | None = Field(None, max_length=64)


def lock_view(record: LockRecord) -> dict[str, Any]:
    """A lock record as the API shows it."""
    return record.public()


def describe_lock(record: LockRecord) -> str:
    """``web is locked by alice (reason)``, for conflicts and chat."""
    why = f" ({record.reason})" if record.reason else ""
    return f"{record.service} is locked by {record.owner}{why}"


def describe_claim(claim: Claim) -> str:
    """``staging is claimed by alice for main``."""
    branch = f" for {claim.branch}" if claim.branch else ""
    return f"{claim.env} is claimed by {claim.owner}{branch}"


def check_force(team: Team, owner: str, force: bool) -> None:
    """403 unless ``owner`` is an admin, when ``force`` is asked for."""
    if force and owner not in team.svc.settings.admin_names:
        raise HTTPException(403, f"{owner!r} is not an admin (BUILDQ_ADMINS): cannot force")


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
async def put_lock(service: str, body: LockRequest, t: TeamDep) -> dict[str, Any]:
    """Take (or renew, for the same owner) a manual lock; 409 if held by another."""
    ttl_s = body.ttl_s or t.svc.settings.lock_default_ttl_s
    taken, record = await t.locks.acquire_manual(
        validate_name(service),
        owner=validate_owner(body.owner),
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
    owner: Annotated[str, Query(min_length=1, max_length=64)],
    force: bool = False,
) -> dict[str, Any]:
    """Release a lock: only its owner, or an admin with ``force=true``."""
    validate_name(service)
    validate_owner(owner)
    check_force(t, owner, force)
    outcome, record = await t.locks.release_manual(service, owner=owner, force=force)
    if outcome is Released.NOT_HELD or record is None:
        raise HTTPException(404, f"{service} is not locked")
    if outcome is Released.NOT_OWNER:
        raise HTTPException(403, f"{describe_lock(record)}; only they (or an admin) can unlock")
    return {"released": True, "lock": lock_view(record)}


@router.get("/staging")
async def list_claims(t: TeamDep) -> list[dict[str, Any]]:
    """Every unexpired staging claim."""
    return [c.public() for c in await t.staging.claims()]


@router.put("/staging/{env}")
async def put_claim(env: str, body: ClaimRequest, t: TeamDep) -> dict[str, Any]:
    """Claim (or renew, for the same owner) an environment; 409 if claimed by another."""
    ttl_s = body.ttl_s or t.svc.settings.claim_default_ttl_s or None
    won, claim = await t.staging.claim(
        validate_name(env, "environment"),
        owner=validate_owner(body.owner),
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
    owner: Annotated[str, Query(min_length=1, max_length=64)],
    force: bool = False,
) -> dict[str, Any]:
    """Release a claim: only its owner, or an admin with ``force=true``."""
    validate_name(env, "environment")
    validate_owner(owner)
    check_force(t, owner, force)
    outcome, claim = await t.staging.release(env, owner=owner, force=force)
    if outcome is Released.NOT_HELD or claim is None:
        raise HTTPException(404, f"{env} is not claimed")
    if outcome is Released.NOT_OWNER:
        raise HTTPException(403, f"{describe_claim(claim)}; only they (or an admin) can release")
    return {"released": True, "claim": claim.public()}
