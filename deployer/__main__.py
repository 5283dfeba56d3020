"""``python -m deployer``: run one deployer process."""

from __future__ import annotations

import sys

import anyio

from deployer import limits, sandbox
from deployer.worker import Deployer
from shared.core.errors import ConfigError
from shared.core.logsetup import configure_logging, secret_values
from shared.core.settings import Settings, get_settings
from shared.engine.daemon import run_until_signalled
from shared.engine.stages import BUILD
from shared.redis.client import make_redis
from shared.redis.eviction import check_at_start
from shared.storage.s3 import Storage, make_s3_client


async def serve(settings: Settings) -> None:
    redis = make_redis(settings)
    storage = Storage(
        make_s3_client(settings), settings.s3_bucket, concurrency=settings.upload_concurrency
    )
    deployer = Deployer(
        settings,
        redis,
        storage,
        worker_id=BUILD.new_worker_id(),
        slots=settings.deployer_slots,
        blocking_redis=lambda: make_redis(settings, blocking=True),
    )
    try:
        await run_until_signalled(deployer.run, name="deployer")
    finally:
        await redis.aclose()


def main() -> None:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"buildq deployer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, json=settings.log_json, secrets=secret_values(settings))
    try:
        check_at_start(settings, process="deployer")  # before anything else touches Redis or S3
    except ConfigError as exc:
        print(f"buildq deployer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sandbox.announce(settings)  # logs the build isolation level; warns when it is the weakest
    limits.announce(settings)  # logs how build limits are enforced; warns for rlimits
    anyio.run(serve, settings)


if __name__ == "__main__":
    main()
