"""The FastAPI application and its lifespan (clients, ingest loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import structlog
from fastapi import FastAPI

from shared import __version__
from shared.coord.ended import release_locks_of_ended
from shared.coord.lockbook import LockBook
from shared.core.errors import StorageError
from shared.core.heap import settle
from shared.core.settings import Settings
from shared.engine.consumer import Consumer
from shared.engine.history import keep_ended
from shared.engine.jobs import JobStore
from shared.engine.stages import INGEST
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from shared.storage.backend import open_storage
from uploader import (
    api,
    chatops,
    control_api,
    dashboard,
    events,
    hooks,
    login,
    metrics,
    services_api,
    serving,
    team_api,
)
from uploader.durations import record_durations
from uploader.errors import install_error_handlers
from uploader.ingest import Ingest
from uploader.loghub import LogHub
from uploader.security import install_security
from uploader.sites import SitesOrigin
from uploader.state import Services
from uploader.statuses import StatusReporter, report_statuses

log = structlog.get_logger("uploader")


def create_app(settings: Settings, *, run_ingest: bool = True) -> SitesOrigin:
    """The uploader's ASGI app: the API, and sites for requests on the sites listener;
    ``run_ingest`` also runs the ingest stage in this process."""
    statuses = StatusReporter(settings)  # ConfigError at start for odd status settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = Keys(settings.namespace)
        redis = make_redis(settings)
        storage = open_storage(settings)
        try:
            await storage.ensure_bucket()
        except StorageError as exc:
            log.warning("uploader.bucket_unavailable", error=str(exc))
        store = JobStore(redis, keys, settings)
        hub = LogHub(
            make_reader=lambda: make_redis(settings, blocking=True),
            redis=redis,
            keys=keys,
            max_followers=settings.max_log_streams,
        )
        app.state.services = Services(
            settings, keys, redis, storage, store, hub, statuses.bind(redis)
        )
        stopping = anyio.Event()
        hub_scope = anyio.CancelScope()

        async def run_hub() -> None:
            with hub_scope:
                async with anyio.create_task_group() as hub_tasks:
                    hub_tasks.start_soon(hub.run)
                    hub_tasks.start_soon(
                        partial(record_durations, hub, store, ttl_s=settings.job_ttl_s)
                    )
                    hub_tasks.start_soon(report_statuses, hub, store, statuses)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_hub)
            if run_ingest:
                worker_id = INGEST.new_worker_id()
                ingest = Ingest(
                    settings=settings,
                    keys=keys,
                    store=store,
                    storage=storage,
                    git_limiter=anyio.CapacityLimiter(settings.ingest_slots),
                )
                consumer = Consumer(
                    redis,
                    keys,
                    settings,
                    stage=INGEST,
                    worker_id=worker_id,
                    slots=settings.ingest_slots,
                    handler=ingest.run,
                    after_first_run=settle,  # boto3 has loaded: shared/core/heap.py
                    blocking_redis=lambda: make_redis(settings, blocking=True),
                    # A job that ends here (its clone failed, or it was cancelled)
                    # keeps its record and log in S3 like one that ends in a deployer.
                    on_end=partial(keep_ended, redis, keys, storage),
                    # A deployer of this host that died holds its deploy locks no more.
                    on_worker_ended=partial(
                        release_locks_of_ended,
                        LockBook(redis, keys, events_max=settings.events_max_entries),
                    ),
                )
                tg.start_soon(consumer.run, stopping)
            try:
                yield
            finally:
                stopping.set()
                hub_scope.cancel()
        await statuses.aclose()
        await redis.aclose()

    app = FastAPI(title="buildq", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    install_security(app, settings)
    app.include_router(api.router)
    app.include_router(control_api.router)
    app.include_router(metrics.router)
    app.include_router(team_api.router)
    app.include_router(chatops.router)
    app.include_router(services_api.router)
    app.include_router(hooks.router)
    app.include_router(serving.router)
    app.include_router(events.router)
    app.include_router(dashboard.router)
    app.include_router(login.router)

    return SitesOrigin(app, settings.sites_port)
