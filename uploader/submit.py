"""One way in for a deployment: ``POST /deployments`` and the chat ``deploy`` command
both go through :func:`submit`, so both apply the same checks in the same order and
write the same record.

The checks, in order: the repository URL (its form, and the operator's repository
host lists ``BUILDQ_REPO_HOST_ALLOWLIST``/``DENYLIST``), the service name, the
caller's right to deploy that service, ``ref``/``root_dir``/``build``, and last the
per-identity rate limit (``uploader/ratelimit.py``), so a refused request does not
spend the caller's budget. Each surface words the refusals its own way (HTTP status,
chat reply).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from shared.coord.services import ServiceBook
from shared.core.errors import PermanentError, TransientError, ValidationError
from shared.core.names import service_from_repo_url, validate_name, validate_relative_dir
from shared.core.settings import Settings
from shared.engine.durable import keep_accepted
from shared.engine.jobs import Priority, Status, new_job_id
from uploader.auth import Action, Identity, decide
from uploader.netcheck import HostPolicy
from uploader.ratelimit import submission_wait_s
from uploader.repourl import validate_ref, validate_repo_url
from uploader.state import Services


class Forbidden(PermanentError):
    """The caller may not deploy this service; the message says why."""


class RateLimited(TransientError):
    """The caller submitted more than its limit this minute."""

    def __init__(self, name: str, limit: int, retry_after_s: int) -> None:
        super().__init__(f"more than {limit} submissions per minute for {name}")
        self.name = name
        self.limit = limit
        self.retry_after_s = retry_after_s


class KeyExpired(PermanentError):
    """The job an ``Idempotency-Key`` names has expired while the key lived on."""


@dataclass(frozen=True, slots=True)
class Submission:
    """What a caller asks to deploy (``service`` defaults to the repository's name).

    Without ``repo_url`` it names a known service (``shared/coord/services.py``):
    its repository, production branch and build settings fill what is not given."""

    repo_url: str | None
    service: str | None = None
    ref: str | None = None
    root_dir: str | None = None
    build: Mapping[str, Any] | None = None
    priority: Priority = Priority.NORMAL
    # Only a verified webhook sets it (``uploader/hooks.py``), never a request body.
    secrets_of: str | None = None  # the parent whose secrets a preview's build gets


@dataclass(frozen=True, slots=True)
class Receipt:
    """The job a submission created, or the earlier one its idempotency key names."""

    job_id: str
    status: Status
    service: str
    seq: int
    created: bool = True


@lru_cache(maxsize=4)
def repo_hosts(settings: Settings) -> HostPolicy:
    """The operator's repository host allow and deny lists."""
    return HostPolicy.of(
        settings.repo_host_allowlist.split(","), settings.repo_host_denylist.split(",")
    )


async def from_service(svc: Services, submission: Submission) -> Submission:
    """``submission`` with what its service's record supplies: the repository, and
    (unless given) the production branch, root directory and build settings.
    A submission with its own ``repo_url`` is returned as it is."""
    if submission.repo_url is not None:
        return submission
    if not submission.service:
        raise ValidationError("name a repo_url, or the service of a registered repository")
    name = validate_name(submission.service)
    record = await ServiceBook(svc.redis, svc.keys).get(name)
    if record is None:
        raise ValidationError(
            f"no service {name!r}: register it (PUT /services/{name}) or name a repo_url"
        )
    defaults = record.build.model_dump(exclude_none=True)
    build = {k: v for k, v in defaults.items() if k in ("command", "output")}
    return replace(
        submission,
        repo_url=record.repo_url,
        ref=submission.ref or record.production_branch,
        root_dir=submission.root_dir or defaults.get("root_dir"),
        build=submission.build if submission.build is not None else build or None,
    )


def _record_fields(svc: Services, who: Identity, submission: Submission) -> dict[str, Any]:
    """The checked record fields; ValidationError or :class:`Forbidden` otherwise."""
    settings = svc.settings
    url = submission.repo_url
    if url is None:
        raise ValidationError("repo_url is required")  # from_service fills it
    validate_repo_url(url, allow_local=settings.allow_local_repos, hosts=repo_hosts(settings))
    name = submission.service
    service = validate_name(name) if name else service_from_repo_url(url)
    reason = decide(who, Action.DEPLOY, service)
    if reason is not None:
        raise Forbidden(reason)
    ref = validate_ref(submission.ref) if submission.ref else None
    root_dir = validate_relative_dir(submission.root_dir) or None if submission.root_dir else None
    build = dict(submission.build) if submission.build else None
    if build and "output" in build:
        build["output"] = validate_relative_dir(build["output"], "build output") or "."
    return {
        "service": service,
        "repo_url": url,
        "ref": ref,
        "root_dir": root_dir,
        "build": build,
        "submitter": who.name,
        "priority": submission.priority,
        **_secrets_grant(who, service, submission),
    }


def _secrets_grant(who: Identity, service: str, submission: Submission) -> dict[str, str]:
    """The record's ``secrets_of`` field: only for a preview ``<parent>--…`` of a
    parent that ``who`` may deploy; ValidationError or :class:`Forbidden` otherwise."""
    parent = submission.secrets_of
    if parent is None:
        return {}
    validate_name(parent)
    if not service.startswith(f"{parent}--"):
        raise ValidationError(f"{service} is not a preview of {parent}: it gets its own secrets")
    reason = decide(who, Action.DEPLOY, parent)
    if reason is not None:
        raise Forbidden(reason)
    return {"secrets_of": parent}


async def submit(
    svc: Services, who: Identity, submission: Submission, *, idempotency_key: str | None = None
) -> Receipt:
    """Check ``submission`` as ``who`` and create its job.

    With an ``idempotency_key`` (scoped to ``who``), a repeat returns the first job
    (``created=False``). Raises ValidationError, :class:`Forbidden`,
    :class:`RateLimited` or :class:`KeyExpired`; Redis errors propagate.
    """
    if submission.repo_url is None and submission.service:
        reason = decide(who, Action.DEPLOY, validate_name(submission.service))
        if reason is not None:  # before the lookup: a stranger learns nothing of the record
            raise Forbidden(reason)
    fields = _record_fields(svc, who, await from_service(svc, submission))
    clock = svc.store.clock
    wait_s = await submission_wait_s(svc, who.name, now_s=clock())
    if wait_s:
        raise RateLimited(who.name, svc.settings.submit_rate_per_min, wait_s)
    job_id = new_job_id(clock)
    if idempotency_key is None:
        seq = await svc.store.submit(job_id, **fields)
        await _keep_accepted(svc, job_id)
        return Receipt(job_id, Status.ACCEPTED, fields["service"], seq)
    # Scoped to the caller: another identity's key can neither replay nor block this one.
    scoped = f"{who.name}\x00{idempotency_key}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(scoped).hexdigest()
    job_id, created = await svc.store.submit_once(job_id, digest, **fields)
    record = await svc.store.get(job_id)
    if record is None:
        raise KeyExpired("the job for this Idempotency-Key has expired; use a new key")
    if created:
        await keep_accepted(svc.storage, record)
    return Receipt(job_id, record.status, record.service, record.seq, created)


async def _keep_accepted(svc: Services, job_id: str) -> None:
    """The job's S3 copy from its acceptance on (``shared/engine/durable.py``), so
    ``buildq doctor --recover`` can queue it again if Redis loses it. Best effort: the
    job is in Redis, and a failed write is logged there."""
    record = await svc.store.get(job_id)
    if record is not None:  # None: cancelled and expired already; nothing to keep
        await keep_accepted(svc.storage, record)
