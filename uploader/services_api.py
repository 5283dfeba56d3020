"""Service routes: services as records (``shared/coord/services.py``) and their
secrets (``shared/coord/secrets.py``).

``PUT /services/{name}`` is for a deployer of that service or an admin, ``DELETE``
for admins (deployments stay in the history). Secrets are set, listed (names and
update times only) and removed by deployers of the service; their values, like the
webhook secret, are write-only. ``POST /services/{name}/rollback`` (deployers of the
service) moves the live alias back to an earlier deployment (``shared/coord/rollback.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from shared.coord.lockbook import MANUAL_TASK, LockRecord
from shared.coord.rollback import RollbackRefused, Rollbacks
from shared.coord.secrets import SecretStore, seal, validate_secret_name
from shared.coord.services import DEFAULT_BRANCH, BuildDefaults, ServiceBook, ServiceRecord
from shared.coord.sites import Sites
from shared.core.errors import ConfigError, ValidationError
from shared.core.names import validate_name, validate_relative_dir
from shared.core.siteaddr import site_url
from shared.engine.jobs import JobRecord
from uploader.access import Caller
from uploader.api import Svc
from uploader.auth import Action, Role, require
from uploader.jsonbody import ParsedJSONRoute
from uploader.ownership import describe_lock
from uploader.repourl import REF_RE, is_commit_id, validate_ref, validate_repo_url
from uploader.state import Services
from uploader.submit import repo_hosts

router = APIRouter(route_class=ParsedJSONRoute, tags=["services"])
HISTORY = 20
MIN_WEBHOOK_SECRET = 16
ServiceName = Annotated[str, Path(max_length=63)]
SecretName = Annotated[str, Path(max_length=128)]


class ServiceBuild(BaseModel):
    """A service's build settings (no ``env``: per-service values are secrets)."""

    model_config = ConfigDict(extra="forbid")
    command: str | None = Field(None, min_length=1, max_length=4096)
    output: str | None = Field(None, min_length=1, max_length=255)
    root_dir: str | None = Field(None, min_length=1, max_length=255)


class ServiceSpec(BaseModel):
    """``PUT /services/{name}`` body; ``webhook_secret`` is write-only (``""`` removes
    it, leaving it out keeps the one set before)."""

    model_config = ConfigDict(extra="forbid")
    repo_url: str = Field(min_length=1, max_length=2048)
    production_branch: str = Field(DEFAULT_BRANCH, min_length=1, max_length=255)
    build: ServiceBuild | None = None
    preview_branches: list[str] = Field(default_factory=lambda: ["*"], max_length=64)
    webhook_secret: str | None = Field(None, max_length=512)


class ServiceView(ServiceRecord):
    """A service as the API shows it: the record and its live address."""

    url: str


class ServiceDetail(ServiceView):
    """One service with its live deployment, what went live lately (deploys and
    rollbacks, newest first) and the last deployments."""

    live: dict[str, str]
    promotions: list[dict[str, Any]]
    deployments: list[JobRecord]


class RollbackSpec(BaseModel):
    """``POST /services/{name}/rollback`` body: the deployment to go back to
    (default: the one live before the current one)."""

    model_config = ConfigDict(extra="forbid")
    to: str | None = Field(None, min_length=1, max_length=64)


class RollbackView(BaseModel):
    """A rollback made: the deployment now live, its new seq, what it replaced."""

    service: str
    id: str
    seq: int
    previous: str | None
    rollback: bool = True
    url: str


class SecretValue(BaseModel):
    """``PUT /services/{name}/secrets/{key}`` body."""

    model_config = ConfigDict(extra="forbid")
    value: str = Field(max_length=16 * 1024)


class SecretView(BaseModel):
    name: str
    updated_at: int


def _view(svc: Services, record: ServiceRecord) -> ServiceView:
    return ServiceView(**record.model_dump(), url=site_url(svc.settings, record.name))


def _record(svc: Services, name: str, spec: ServiceSpec) -> ServiceRecord:
    """The checked record; ValidationError (422) says what is wrong."""
    settings = svc.settings
    url = validate_repo_url(
        spec.repo_url, allow_local=settings.allow_local_repos, hosts=repo_hosts(settings)
    )
    branch = validate_ref(spec.production_branch)
    if is_commit_id(branch):
        raise ValidationError("production_branch must be a branch name, not a commit id")
    for pattern in spec.preview_branches:
        if not REF_RE.fullmatch(pattern.replace("*", "x").replace("?", "x")):
            raise ValidationError(f"invalid preview_branches pattern {pattern[:80]!r}")
    build = spec.build or ServiceBuild()
    return ServiceRecord(
        name=name,
        repo_url=url,
        production_branch=branch,
        build=BuildDefaults(
            command=build.command,
            output=validate_relative_dir(build.output, "build output") or "."
            if build.output
            else None,
            root_dir=validate_relative_dir(build.root_dir) or None if build.root_dir else None,
        ),
        preview_branches=list(dict.fromkeys(spec.preview_branches)),
    )


def _sealed(svc: Services, secret: str | None) -> str | None:
    """The webhook secret sealed for storage, ``""`` to remove it, None to keep it."""
    if secret is None or secret == "":
        return secret
    if len(secret) < MIN_WEBHOOK_SECRET:
        raise ValidationError(f"webhook_secret must be at least {MIN_WEBHOOK_SECRET} characters")
    try:
        return seal(svc.settings, secret)
    except ConfigError as exc:  # the server's state, not the request's: 409
        raise HTTPException(409, str(exc)) from None


async def _known(svc: Services, name: str) -> ServiceRecord:
    record = await ServiceBook(svc.redis, svc.keys).get(validate_name(name))
    if record is None:
        raise HTTPException(404, f"no service {name!r}")
    return record


@router.get("/services", response_model=list[ServiceView])
async def list_services(svc: Svc) -> list[ServiceView]:
    """Every registered service, by name."""
    return [_view(svc, r) for r in await ServiceBook(svc.redis, svc.keys).all()]


@router.get("/services/{name}", response_model=ServiceDetail)
async def get_service(name: ServiceName, svc: Svc) -> ServiceDetail:
    """One service, its live deployment and its last 20 deployments."""
    record = await _known(svc, name)
    sites = Sites(svc.redis, svc.keys, events_max=svc.settings.events_max_entries)
    return ServiceDetail(
        **_view(svc, record).model_dump(),
        live=await sites.live(record.name),
        promotions=await sites.promotions(record.name, limit=HISTORY),
        deployments=await svc.store.recent(limit=HISTORY, service=record.name),
    )


@router.post("/services/{name}/rollback", response_model=RollbackView)
async def rollback_service(
    name: ServiceName, svc: Svc, who: Caller, spec: RollbackSpec | None = None
) -> RollbackView:
    """Serve an earlier deployment again at once: no build, no upload; a new
    promotion (higher seq, new fence), so older deploys in flight cannot undo it."""
    require(who, Action.DEPLOY, validate_name(name))
    sites = Sites(svc.redis, svc.keys, events_max=svc.settings.events_max_entries)
    live = await sites.live(name)
    if not live and await ServiceBook(svc.redis, svc.keys).get(name) is None:
        raise HTTPException(404, f"no service {name!r}")
    held = await svc.redis.get(svc.keys.lock(name))
    holder = LockRecord.parse(name, held) if held else None
    if (
        holder is not None
        and holder.task == MANUAL_TASK
        and holder.owner != who.name
        and who.role is not Role.ADMIN
    ):
        # Someone froze this service on purpose: a rollback is a change like any other.
        raise HTTPException(409, f"{describe_lock(holder)}; ask them, or an admin")
    to = spec.to if spec is not None else None
    try:
        target, result = await Rollbacks(sites, svc.store, svc.storage).roll_back(
            name, to, by=who.name
        )
    except RollbackRefused as exc:
        raise HTTPException(404 if exc.missing else 409, str(exc)) from None
    assert result.seq is not None
    return RollbackView(
        service=name,
        id=target,
        seq=result.seq,
        previous=live.get("id"),
        url=site_url(svc.settings, name),
    )


@router.put("/services/{name}", response_model=ServiceView)
async def put_service(
    name: ServiceName, spec: ServiceSpec, svc: Svc, who: Caller, response: Response
) -> ServiceView:
    """Register or update a service (201 when new)."""
    validate_name(name)
    require(who, Action.DEPLOY, name)
    record = _record(svc, name, spec)
    book = ServiceBook(svc.redis, svc.keys)
    existed = await book.get(name) is not None
    stored = await book.put(record, who=who.name, sealed_secret=_sealed(svc, spec.webhook_secret))
    response.status_code = 200 if existed else 201
    return _view(svc, stored)


@router.delete("/services/{name}")
async def delete_service(name: ServiceName, svc: Svc, who: Caller) -> dict[str, Any]:
    """Forget a service and its secrets (admins); its deployments stay in the history."""
    validate_name(name)
    if who.role is not Role.ADMIN:
        raise HTTPException(403, f"{who.name} ({who.role.value}) may not delete services: admin")
    if not await ServiceBook(svc.redis, svc.keys).delete(name):
        raise HTTPException(404, f"no service {name!r}")
    return {"name": name, "deleted": True}


@router.get("/services/{name}/secrets", response_model=list[SecretView])
async def list_secrets(name: ServiceName, svc: Svc, who: Caller) -> list[SecretView]:
    """The service's secrets: names and update times, never values."""
    require(who, Action.DEPLOY, validate_name(name))
    record = await _known(svc, name)
    infos = await SecretStore(svc.redis, svc.keys, svc.settings).names(record.name)
    return [SecretView(name=i.name, updated_at=i.updated_at) for i in infos]


@router.put("/services/{name}/secrets/{key}", response_model=SecretView)
async def put_secret(
    name: ServiceName, key: SecretName, body: SecretValue, svc: Svc, who: Caller
) -> SecretView:
    """Set a secret only builds of this service receive (the value is never shown)."""
    require(who, Action.DEPLOY, validate_name(name))
    validate_secret_name(key)
    record = await _known(svc, name)
    store = SecretStore(svc.redis, svc.keys, svc.settings)
    try:
        info = await store.put(record.name, key, body.value)
    except ConfigError as exc:
        raise HTTPException(409, str(exc)) from None
    return SecretView(name=info.name, updated_at=info.updated_at)


@router.delete("/services/{name}/secrets/{key}")
async def delete_secret(
    name: ServiceName, key: SecretName, svc: Svc, who: Caller
) -> dict[str, Any]:
    """Remove a secret."""
    require(who, Action.DEPLOY, validate_name(name))
    validate_secret_name(key)
    record = await _known(svc, name)
    if not await SecretStore(svc.redis, svc.keys, svc.settings).delete(record.name, key):
        raise HTTPException(404, f"no secret {key!r} for {record.name}")
    return {"name": key, "deleted": True}
