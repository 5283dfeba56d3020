"""Commit statuses back to the forge for deploys a webhook started: ``pending`` when
the deploy is accepted, ``success`` with the site's URL when it is live, ``failure``
when it failed, ``error`` when it was cancelled or superseded.

Only where the operator configured a token for that forge (``BUILDQ_STATUS_TOKENS``,
``forge=token``), and only to that forge's API URL (``BUILDQ_STATUS_API_URLS``,
``forge=url``; GitHub's is the default): a token never goes to a host a payload or a
service record names. The webhook route remembers the job's target (forge,
repository, commit) in ``{ns}:status-target:<id>`` and posts ``pending`` after its
answer; every uploader follows ``{ns}:events`` (``uploader/loghub.py``) and posts the
end state. Several uploaders see the same event: ``SET NX`` on
``{ns}:status-sent:<id>:<state>`` lets exactly one post it. The uploaders keep where
they have read to in ``{ns}:status-cursor``, and a starting uploader reads on from
there: a job that ended while no uploader ran still gets its end status when one
starts (unless the events stream was trimmed past it meanwhile: that is logged).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from urllib.parse import quote

import anyio
import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.core.errors import ConfigError
from shared.core.settings import Settings
from shared.core.siteaddr import preview_url, site_url
from shared.engine.jobs import JobStore, Status
from shared.redis.keys import Keys
from uploader.feed import follow_feed
from uploader.loghub import LogHub, StreamEntry

log = structlog.get_logger("statuses")

FORGES = ("github", "gitea", "gitlab")
ATTEMPTS = 3
TIMEOUT_S = 10.0
RETRY_S = 1.0
END_STATES = {
    Status.LIVE.value: ("success", "live"),
    Status.FAILED.value: ("failure", "failed"),
    Status.CANCELLED.value: ("error", "cancelled"),
    Status.SUPERSEDED.value: ("error", "superseded by a newer deploy"),
}
GITLAB_STATES = {
    "pending": "pending",
    "success": "success",
    "failure": "failed",
    "error": "canceled",
}


@dataclass(frozen=True, slots=True)
class StatusTarget:
    """Where a job's commit statuses go."""

    forge: str
    repo: str  # owner/name, or GitLab's project id (uploader/forges.py checks its form)
    commit: str
    service: str


def parse_pairs(raw: str, what: str) -> dict[str, str]:
    """``forge=value,...`` into {forge: value}; ConfigError naming ``what`` when odd."""
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        forge, sep, value = item.strip().partition("=")
        if not sep or forge not in FORGES or not value:
            raise ConfigError(f"{what} entries must look like forge=value, forge one of {FORGES}")
        pairs[forge] = value
    return pairs


class StatusReporter:
    """Posts commit statuses for one uploader process (``bind`` it to Redis first)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.redis: Redis | None = None
        secret = settings.status_tokens.get_secret_value() if settings.status_tokens else ""
        self.tokens = parse_pairs(secret, "BUILDQ_STATUS_TOKENS")
        self.api_urls = {
            forge: url.rstrip("/")
            for forge, url in parse_pairs(
                settings.status_api_urls, "BUILDQ_STATUS_API_URLS"
            ).items()
        }
        for forge, url in self.api_urls.items():
            if not url.startswith(("https://", "http://")):
                raise ConfigError(f"BUILDQ_STATUS_API_URLS: {forge}'s API URL must be http(s)")
        self.http = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)

    def bind(self, redis: Redis) -> StatusReporter:
        """Use ``redis`` (the process's client) from now on."""
        self.redis = redis
        return self

    @property
    def _redis(self) -> Redis:
        if self.redis is None:
            raise RuntimeError("StatusReporter used before bind()")
        return self.redis

    async def aclose(self) -> None:
        await self.http.aclose()

    def enabled(self, forge: str) -> bool:
        return forge in self.tokens and forge in self.api_urls

    async def remember(self, job_id: str, target: StatusTarget) -> None:
        """Keep ``job_id``'s target for the end status (as long as its record lives)."""
        await self._redis.set(
            self.keys.status_target(job_id),
            json.dumps(asdict(target)),
            ex=self.settings.job_ttl_s,
        )

    async def target(self, job_id: str) -> StatusTarget | None:
        raw = await self._redis.get(self.keys.status_target(job_id))
        return None if raw is None else StatusTarget(**json.loads(raw))

    async def report(
        self, job_id: str, target: StatusTarget, state: str, description: str, url: str
    ) -> bool:
        """Post one status once across every uploader; True if this call posted it."""
        if not self.enabled(target.forge):
            return False
        claimed = await self._redis.set(
            self.keys.status_sent(job_id, state), "1", nx=True, ex=self.settings.job_ttl_s
        )
        if not claimed:
            return False
        request = self._request(target, state, description, url)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self.http.post(
                    request.url, json=request.body, headers=request.headers
                )
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    log.info("status.posted", job_id=job_id, forge=target.forge, state=state)
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the forge refused it (token, repository): retrying will not help
            log.warning(
                "status.post_failed",
                job_id=job_id,
                forge=target.forge,
                state=state,
                attempt=attempt,
                problem=problem,
            )
            await anyio.sleep(RETRY_S * attempt)
        return False

    def _request(self, target: StatusTarget, state: str, description: str, url: str) -> _Request:
        base, token = self.api_urls[target.forge], self.tokens[target.forge]
        context = f"buildq/{target.service}"
        sha = quote(target.commit, safe="")
        if target.forge == "gitlab":
            return _Request(
                f"{base}/projects/{quote(target.repo, safe='')}/statuses/{sha}",
                {
                    "state": GITLAB_STATES[state],
                    "name": context,
                    "target_url": url,
                    "description": description[:140],
                },
                {"PRIVATE-TOKEN": token},
            )
        owner, name = (quote(part, safe="") for part in target.repo.split("/", 1))
        scheme = "Bearer" if target.forge == "github" else "token"
        return _Request(
            f"{base}/repos/{owner}/{name}/statuses/{sha}",
            {
                "state": state,
                "context": context,
                "target_url": url,
                "description": description[:140],
            },
            {"Authorization": f"{scheme} {token}", "Accept": "application/vnd.github+json"},
        )


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    body: Mapping[str, str]
    headers: Mapping[str, str]


def job_url(settings: Settings, job_id: str, service: str, status: str) -> str:
    """The link a status carries: the live site, else the deployment's preview."""
    return (
        site_url(settings, service)
        if status == Status.LIVE.value
        else preview_url(settings, job_id)
    )


async def report_pending(reporter: StatusReporter, job_id: str, target: StatusTarget) -> None:
    """The accepted deploy's ``pending`` status (after the webhook's answer)."""
    try:
        await reporter.report(
            job_id,
            target,
            "pending",
            "queued for deploy",
            job_url(reporter.settings, job_id, target.service, "pending"),
        )
    except RedisError as exc:
        log.warning("status.redis_error", job_id=job_id, error=str(exc))


def ended(entry: StreamEntry) -> tuple[str, str] | None:
    """(job id, status) of a ``job`` event that ends the job."""
    f = entry.fields
    if f.get("kind") == "job" and f.get("status") in END_STATES and f.get("id"):
        return f["id"], f["status"]
    return None


async def report_statuses(hub: LogHub, store: JobStore, reporter: StatusReporter) -> None:
    """Post end statuses of webhook deploys, from where the uploaders left off
    (``uploader/feed.py``), until cancelled. Posts run beside the follow loop (a slow
    forge delays nothing else), a few at a time."""
    if not reporter.tokens:
        return  # nothing configured: nothing to follow
    limiter = anyio.CapacityLimiter(4)
    async with anyio.create_task_group() as posts:

        async def handle(entry: StreamEntry) -> None:
            end = ended(entry)
            if end is None:
                return
            target = await reporter.target(end[0])
            if target is not None and reporter.enabled(target.forge):
                posts.start_soon(_post_end, reporter, end[0], end[1], target, limiter)

        await follow_feed(
            hub, store.redis, name="statuses", cursor=store.keys.status_cursor, handle=handle
        )


async def _post_end(
    reporter: StatusReporter,
    job_id: str,
    status: str,
    target: StatusTarget,
    limiter: anyio.CapacityLimiter,
) -> None:
    state, description = END_STATES[status]
    async with limiter:
        try:
            await reporter.report(
                job_id,
                target,
                state,
                description,
                job_url(reporter.settings, job_id, target.service, status),
            )
        except RedisError as exc:
            log.warning("status.redis_error", job_id=job_id, error=str(exc))
