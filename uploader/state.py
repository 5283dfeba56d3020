"""What every request handler needs, built once per process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from redis.asyncio import Redis

from shared.core.settings import Settings
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from shared.storage.s3 import Storage
from uploader.loghub import LogHub

if TYPE_CHECKING:
    from uploader.statuses import StatusReporter


@dataclass(frozen=True, slots=True)
class Services:
    """Clients and stores shared by the routes."""

    settings: Settings
    keys: Keys
    redis: Redis
    storage: Storage
    store: JobStore
    logs: LogHub | None = None  # followers of build logs (None: streaming off)
    statuses: StatusReporter | None = None  # commit statuses to forges (None: off)


def services(request: Request) -> Services:
    """FastAPI dependency: the process's :class:`Services`."""
    svc: Services = request.app.state.services
    return svc
