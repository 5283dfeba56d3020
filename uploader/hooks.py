"""Git webhooks: ``POST /hooks/github``, ``/hooks/gitlab`` and ``/hooks/gitea``.

A delivery carries its own signature, never a bearer token (``uploader/access.py``
lets these paths through like ``POST /chatops``); the request guard still caps the
body and parses the JSON, and replays the raw bytes, which the signature covers.

In order: the payload's repository URLs find the services registered for that
repository (404 when none), the signature or token is checked against each one's
webhook secret in constant time (401 when none matches: nothing is queued), the
event is read (``uploader/forges.py``; 202 with a reason for what is not acted on).
A push to the production branch deploys exactly the pushed commit; a push to
another branch (matching ``preview_branches``) or a pull request deploys a preview
service ``<service>--<branch>`` / ``<service>--pr-<n>`` whose address is stable per
branch. Every job is submitted with an idempotency key of the delivery id, so a
replayed delivery acts once.

A preview builds with the service's secrets (the record's ``secrets_of``, which only
this path sets): it is a branch of the service's own repository, pushed by someone who
may push there. Pull requests from forks are not built (``forges.py``): anyone may open
one, and its preview would serve their content under the service's name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTasks

from shared.coord.secrets import unseal
from shared.coord.services import ServiceBook, ServiceRecord
from shared.core.errors import ConfigError, ValidationError
from shared.core.names import validate_name
from shared.engine.jobs import Priority
from uploader.api import Svc
from uploader.auth import Identity, Role
from uploader.forges import FORGES, Forge, HookEvent, Kind, UnsupportedEvent
from uploader.jsonbody import DOCUMENT_KEY, parse_json_body
from uploader.state import Services
from uploader.statuses import StatusTarget, report_pending
from uploader.submit import Forbidden, RateLimited, Submission, submit

router = APIRouter(tags=["hooks"])
log = structlog.get_logger("uploader.hooks")


NAME_MAX = 63
DIGEST_CHARS = 8


def preview_service(service: str, event: HookEvent) -> str | None:
    """The preview's service name: ``<service>--pr-<n>`` or ``<service>--<branch>``,
    its label shortened with a digest of the branch when too long; the same for every
    push. None when ``service`` leaves no room for ``--`` and a digest (over 51
    characters): a preview's name must start with its service's name and ``--``, which
    is what the webhook may deploy to."""
    label = f"pr-{event.number}" if event.kind is Kind.PULL_REQUEST else event.branch or ""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "branch"
    name = f"{service}--{slug}"
    if len(name) > NAME_MAX:
        room = NAME_MAX - len(service) - len("--") - len("-") - DIGEST_CHARS
        if room < 1:
            return None
        digest = hashlib.sha256(label.encode()).hexdigest()[:DIGEST_CHARS]
        head = slug[:room].rstrip("-")
        name = f"{service}--{head}-{digest}" if head else f"{service}--{digest}"
    return validate_name(name)


def _preview(record: ServiceRecord, event: HookEvent, why: str) -> tuple[str | None, str]:
    name = preview_service(record.name, event)
    if name is None:
        limit = NAME_MAX - len("---") - DIGEST_CHARS - 1
        return None, (
            f"{why}: not built, the service name is too long for preview names "
            f"(previews need a service name of at most {limit} characters)"
        )
    return name, why


def _secrets_grant(record: ServiceRecord, event: HookEvent, target: str) -> dict[str, str]:
    """A preview's builds get its parent's secrets: a branch of the same repository."""
    if target == record.name:
        return {}
    return {"secrets_of": record.name}


def _target(record: ServiceRecord, event: HookEvent) -> tuple[str | None, str]:
    """(service to deploy, why) for a push or pull request to ``record``."""
    if event.kind is Kind.PULL_REQUEST:
        return _preview(record, event, f"preview of pull request {event.number}")
    branch = event.branch or ""
    if branch == record.production_branch:
        return record.name, f"push to {branch}"
    if record.wants_preview(branch):
        return _preview(record, event, f"preview of branch {branch}")
    return None, f"branch {branch} is neither {record.production_branch} nor a preview branch"


def _verified(
    svc: Services, forge: Forge, request: Request, body: bytes, *, name: str, sealed: str
) -> bool:
    try:
        secret = unseal(svc.settings, sealed, f"the webhook secret of {name}")
    except ConfigError as exc:
        log.warning("hook.secret_unreadable", service=name, error=str(exc))
        return False
    return forge.verify(request.headers, body, secret)


async def _receive(forge: Forge, request: Request, svc: Services) -> JSONResponse:
    if not request.headers.get(forge.signature_header):
        raise HTTPException(401, f"missing {forge.signature_header} signature")
    body = await request.body()  # the guard's replay of the bytes it capped and parsed
    document = request.scope.get(DOCUMENT_KEY)
    if document is None:
        document = parse_json_body(body)
    urls = forge.repositories(document)
    if not urls:
        raise HTTPException(422, "the payload names no repository URL")
    book = ServiceBook(svc.redis, svc.keys)
    candidates = await book.by_repository(urls)
    if not candidates:
        raise HTTPException(404, f"no service is registered for repository {urls[0][:200]!r}")
    verified: list[ServiceRecord] = []
    for record in candidates:  # every candidate is checked: no early exit
        sealed = await book.sealed_hook_secret(record.name)
        if sealed and _verified(svc, forge, request, body, name=record.name, sealed=sealed):
            verified.append(record)
    if not verified:
        log.warning("hook.unverified", forge=forge.name, repository=urls[0][:200])
        raise HTTPException(401, f"invalid or missing {forge.signature_header} signature")
    try:
        event = forge.event(request.headers, document)
    except UnsupportedEvent as exc:
        return JSONResponse({"status": "ignored", "reason": str(exc)}, status_code=202)
    names = [r.name for r in verified]
    if event.kind is Kind.PING:
        return JSONResponse({"status": "pong", "services": names})
    if event.kind is Kind.IGNORED:
        return JSONResponse({"status": "ignored", "reason": event.reason}, status_code=202)
    delivery = forge.delivery(request.headers, body)
    results = [await _deploy(svc, forge, record, event, delivery) for record in verified]
    created = any(r.get("created") for r in results)
    status = "queued" if created else "duplicate" if any("id" in r for r in results) else "ignored"
    pending = await _remember_targets(svc, forge, document, results)
    return JSONResponse(
        {"status": status, "deployments": results}, status_code=202, background=pending
    )


async def _remember_targets(
    svc: Services, forge: Forge, document: Any, results: list[dict[str, Any]]
) -> BackgroundTasks | None:
    """Where the new deploys' commit statuses go, and their ``pending`` posts to run
    after the answer (the forge waits on nobody); None when statuses are off."""
    reporter = svc.statuses
    repo = forge.status_repo(document)
    if reporter is None or not reporter.enabled(forge.name) or repo is None:
        return None
    tasks = BackgroundTasks()
    for result in results:
        if result.get("created"):
            target = StatusTarget(forge.name, repo, result["commit"], result["service"])
            await reporter.remember(result["id"], target)
            tasks.add_task(report_pending, reporter, result["id"], target)
    return tasks


async def _deploy(
    svc: Services, forge: Forge, record: ServiceRecord, event: HookEvent, delivery: str
) -> dict[str, Any]:
    """Submit ``event``'s commit for ``record`` once per delivery; what happened."""
    target, why = _target(record, event)
    if target is None:
        return {"service": record.name, "reason": why}
    who = Identity(f"{forge.name}-webhook", Role.DEPLOYER, (record.name, f"{record.name}--*"))
    build = record.build.model_dump(exclude_none=True)
    submission = Submission(
        record.repo_url,
        target,
        event.commit,  # pinned: this commit, not whatever the branch points at later
        build.pop("root_dir", None),
        build or None,
        # Production pushes go ahead of manual deploys (normal) and previews (low).
        Priority.HIGH if target == record.name else Priority.LOW,
        **_secrets_grant(record, event, target),
    )
    key = f"hook:{forge.name}:{delivery}:{target}"
    try:
        receipt = await submit(svc, who, submission, idempotency_key=key)
    except (ValidationError, Forbidden) as exc:
        return {"service": target, "reason": str(exc)}
    except RateLimited as exc:
        raise HTTPException(429, str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
    log.info(
        "hook.deploy",
        forge=forge.name,
        service=target,
        job_id=receipt.job_id,
        commit=event.commit,
        created=receipt.created,
    )
    return {
        "service": target,
        "id": receipt.job_id,
        "commit": event.commit,
        "created": receipt.created,
        "reason": why,
    }


@router.post("/hooks/github", status_code=202)
async def github_hook(request: Request, svc: Svc) -> JSONResponse:
    """A GitHub delivery (``X-Hub-Signature-256``): ping, push, pull_request."""
    return await _receive(FORGES["github"], request, svc)


@router.post("/hooks/gitlab", status_code=202)
async def gitlab_hook(request: Request, svc: Svc) -> JSONResponse:
    """A GitLab delivery (``X-Gitlab-Token``): Push Hook, Merge Request Hook."""
    return await _receive(FORGES["gitlab"], request, svc)


@router.post("/hooks/gitea", status_code=202)
async def gitea_hook(request: Request, svc: Svc) -> JSONResponse:
    """A Gitea or Forgejo delivery (``X-Gitea-Signature``): push, pull_request."""
    return await _receive(FORGES["gitea"], request, svc)
