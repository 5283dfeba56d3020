"""``python -m deployer``: run one deployer process."""

from __future__ import annotations

import sys

# structlog imports rich (and pygments) when they are installed, only to render
# console tracebacks; a deployer never does: without them it starts ~5 MiB smaller.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

import ctypes  # noqa: E402 - after the line above, which must precede every import
import ctypes.util  # noqa: E402

import anyio  # noqa: E402

from deployer import limits, sandbox  # noqa: E402
from deployer.worker import Deployer  # noqa: E402
from shared.core.errors import ConfigError  # noqa: E402
from shared.core.logsetup import configure_logging, secret_values  # noqa: E402
from shared.core.settings import Settings, get_settings  # noqa: E402
from shared.engine.daemon import run_until_signalled  # noqa: E402
from shared.engine.stages import BUILD  # noqa: E402
from shared.redis.client import make_redis  # noqa: E402
from shared.redis.eviction import check_at_start  # noqa: E402
from shared.storage.backend import open_storage  # noqa: E402

M_ARENA_MAX = -8  # glibc mallopt(3)
MALLOC_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def limit_malloc_arenas() -> None:
    """Two glibc malloc arenas instead of up to 8 per core: the worker threads that
    run S3 calls and file work otherwise each grow an arena of their own, and the
    process's RSS with them, for no measurable speed here."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def release_free_memory() -> None:
    """Give the heap that start-up freed back to the system. (boto3 and botocore's
    parsed JSON, the bulk of it once, now load with the first job's S3 call:
    ``shared/storage/s3.py``.)"""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


async def serve(settings: Settings) -> None:
    redis = make_redis(settings)
    storage = open_storage(settings)
    deployer = Deployer(
        settings,
        redis,
        storage,
        worker_id=BUILD.new_worker_id(),
        slots=settings.deployer_slots,
        blocking_redis=lambda: make_redis(settings, blocking=True),
    )
    release_free_memory()
    try:
        await run_until_signalled(deployer.run, name="deployer")
    finally:
        await redis.aclose()


def main() -> None:
    limit_malloc_arenas()  # first: before any thread starts
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
