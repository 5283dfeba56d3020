"""Services as records: the repository a service deploys, its production branch, its
build settings and which branches get previews, in ``{ns}:services``.

A record never holds a secret: the webhook secret is sealed (``secrets.py``) under
its own key, and the record says only whether one is set. Deleting a service removes
its record, webhook secret and secrets, never its deployments (history stays).
Checking a repository URL against the operator's rules is the API's job
(``uploader/repourl.py``); this module stores what was checked.
"""

from __future__ import annotations

import fnmatch
import re
import time
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from shared.core.clock import Clock, now_ms
from shared.redis.keys import Keys

DEFAULT_BRANCH = "main"
SCP_URL_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9.-]+):(?!//)(.+)$")


class BuildDefaults(BaseModel):
    """A service's build settings; a request's own ``build`` overrides them."""

    model_config = ConfigDict(extra="forbid")
    command: str | None = None
    output: str | None = None
    root_dir: str | None = None


class ServiceRecord(BaseModel):
    """One service as stored and shown (never a secret)."""

    name: str
    repo_url: str
    production_branch: str = DEFAULT_BRANCH
    build: BuildDefaults = Field(default_factory=BuildDefaults)
    preview_branches: list[str] = Field(default_factory=lambda: ["*"])
    webhook_secret_set: bool = False
    created_at: int = 0
    updated_at: int = 0
    updated_by: str = ""

    def wants_preview(self, branch: str) -> bool:
        """Whether a push to ``branch`` (not the production one) makes a preview."""
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in self.preview_branches)


def repo_identity(url: str) -> str | None:
    """A repository URL as ``host/path`` for matching: host lower-cased, no scheme,
    credentials, port, trailing ``/`` or ``.git``; scp-like ``git@host:path`` too.
    None for what is not a repository URL."""
    url = url.strip()
    scp = SCP_URL_RE.fullmatch(url) if "://" not in url else None
    if scp is not None and ("@" in url or "." in scp.group(1)):  # not mailto:x
        host, path = scp.group(1), scp.group(2)
    elif scp is not None:
        return None
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "ssh", "git", "file") or parts.query:
            return None
        host, path = parts.hostname or "", parts.path
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4].rstrip("/")
    if not path:
        return None
    return f"{host.lower()}/{path}"


class ServiceBook:
    """Reads and writes service records and their webhook secrets."""

    def __init__(self, redis: Redis, keys: Keys, *, clock: Clock = time.time) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock

    async def get(self, name: str) -> ServiceRecord | None:
        raw = await self.redis.hget(self.keys.services, name)
        return ServiceRecord.model_validate_json(raw) if raw else None

    async def all(self) -> list[ServiceRecord]:
        raw = await self.redis.hgetall(self.keys.services)
        records = [ServiceRecord.model_validate_json(v) for v in raw.values()]
        return sorted(records, key=lambda r: r.name)

    async def put(
        self, record: ServiceRecord, *, who: str, sealed_secret: str | None = None
    ) -> ServiceRecord:
        """Create or replace ``record`` (keeping its creation time) in one MULTI;
        ``sealed_secret`` replaces the webhook secret, ``""`` removes it, None keeps it."""
        now = now_ms(self.clock)
        before = await self.get(record.name)
        has_secret = (
            bool(sealed_secret)
            if sealed_secret is not None
            else bool(await self.redis.exists(self.keys.hook_secret(record.name)))
        )
        stored = record.model_copy(
            update={
                "created_at": before.created_at if before else now,
                "updated_at": now,
                "updated_by": who,
                "webhook_secret_set": has_secret,
            }
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.services, record.name, stored.model_dump_json())
            if sealed_secret:
                pipe.set(self.keys.hook_secret(record.name), sealed_secret)
            elif sealed_secret == "":
                pipe.delete(self.keys.hook_secret(record.name))
            await pipe.execute()
        return stored

    async def delete(self, name: str) -> bool:
        """Remove the record, its webhook secret and secrets; False if unknown."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.services, name)
            pipe.delete(self.keys.hook_secret(name), self.keys.secrets(name))
            removed, _ = await pipe.execute()
        return bool(removed)

    async def sealed_hook_secret(self, name: str) -> str | None:
        """The service's sealed webhook secret, or None if it has none."""
        raw = await self.redis.get(self.keys.hook_secret(name))
        return str(raw) if raw else None

    async def by_repository(self, urls: list[str]) -> list[ServiceRecord]:
        """Services whose repository is any of ``urls`` (see :func:`repo_identity`)."""
        wanted = {ident for url in urls if (ident := repo_identity(url))}
        return [r for r in await self.all() if repo_identity(r.repo_url) in wanted]
