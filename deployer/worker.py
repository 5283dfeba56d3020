"""The deployer daemon: a consumer pool over ``{ns}:queue`` running the job pipeline."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import structlog
from redis.asyncio import Redis

from deployer.pipeline import JobRunner
from deployer.workdirs import claim, sweep
from shared.coord.ended import release_locks_of_ended
from shared.core.heap import settle
from shared.core.settings import Settings
from shared.engine.consumer import Consumer
from shared.engine.jobs import JobStore
from shared.engine.stages import BUILD
from shared.redis.keys import Keys
from shared.storage.s3 import Storage

log = structlog.get_logger("deployer")


class Deployer:
    """One deployer process: ``slots`` concurrent jobs."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        storage: Storage,
        *,
        worker_id: str,
        slots: int,
        blocking_redis: Callable[[], Redis],
    ) -> None:
        keys = Keys(settings.namespace)
        work_root = settings.work_dir or Path(tempfile.gettempdir()) / "buildq-work"
        self.work_root = work_root / worker_id
        self.runner = JobRunner(
            settings=settings,
            keys=keys,
            redis=redis,
            store=JobStore(redis, keys, settings),
            storage=storage,
            work_root=self.work_root,
            owner=worker_id,
        )
        self.consumer = Consumer(
            redis,
            keys,
            settings,
            stage=BUILD,
            worker_id=worker_id,
            slots=slots,
            handler=self.runner.run,
            after_first_run=settle,  # boto3 has loaded: shared/core/heap.py
            blocking_redis=blocking_redis,
            obey_fleet=True,
            on_end=self.runner.save_record,
            on_worker_ended=partial(release_locks_of_ended, self.runner.locks.book),
        )

    async def run(self, stopping: anyio.Event) -> None:
        await anyio.to_thread.run_sync(claim, self.work_root)
        swept = await anyio.to_thread.run_sync(sweep, self.work_root.parent, self.work_root)
        if swept.removed:
            log.info(
                "workdirs.swept",
                removed=list(swept.removed),
                bytes=swept.bytes,
                why="their deployers have ended without removing them",
            )
        try:
            async with self.runner.locks.running():  # one watchdog for every deploy lock
                await self.consumer.run(stopping)
        finally:
            shutil.rmtree(self.work_root, ignore_errors=True)
