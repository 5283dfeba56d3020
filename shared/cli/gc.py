"""``buildq gc``: delete published blobs and manifests no kept deployment needs
(:mod:`shared.storage.gc` says what is kept and why it is safe while deploys run)."""

from __future__ import annotations

import json

import anyio
import click
from redis.exceptions import RedisError

from shared.cli.team import parse_duration_s
from shared.core.errors import BuildqError, ConfigError
from shared.core.settings import Settings, load_settings
from shared.redis.client import make_redis
from shared.redis.keys import Keys
from shared.storage.backend import open_storage
from shared.storage.gc import DEFAULT_KEEP_RECENT, Collection, collect
from shared.storage.manifest import manifest_key
from shared.storage.s3 import ObjectNotFound, Storage

MIN_GRACE_S = 3600  # shorter could hurt a publish in flight (see shared/storage/gc.py)
ALIAS_PREFIX = "aliases/"


async def live_deployments(settings: Settings, storage: Storage) -> set[str]:
    """Every service's live deployment id: the aliases in Redis, and their durable
    copies in S3 (``aliases/<service>.json``) in case Redis lost some."""
    keys = Keys(settings.namespace)
    redis = make_redis(settings)
    live: set[str] = set()
    try:
        async for key in redis.scan_iter(match=keys.site("*"), count=500):
            job_id = await redis.hget(key, "id")
            if job_id:
                live.add(str(job_id))
    finally:
        await redis.aclose()
    for obj in await storage.list_objects(ALIAS_PREFIX):
        try:
            data, _ = await storage.get(obj.key)
        except ObjectNotFound:
            continue  # replaced meanwhile: Redis has the newer one
        alias = json.loads(data)
        if isinstance(alias, dict) and isinstance(alias.get("id"), str):
            live.add(alias["id"])
    return live


def _report(result: Collection) -> str:
    verb = "would delete" if result.dry_run else "deleted"
    return (
        f"{verb} {len(result.deleted_manifests)} manifest(s) and "
        f"{len(result.deleted_blobs)} blob(s) ({result.deleted_bytes} bytes); "
        f"kept {len(result.kept_manifests)} deployment(s), {result.kept_blobs} blob(s) "
        f"referenced, {result.young_blobs} unreferenced within the grace period"
    )


@click.command()
@click.option("--dry-run", is_flag=True, help="say what would be deleted; delete nothing")
@click.option(
    "--grace",
    default="1d",
    show_default=True,
    help="never delete anything younger than this (90s, 30m, 2h, 1d; at least 1h)",
)
@click.option(
    "--keep",
    default=None,
    type=click.IntRange(1, 100_000),
    help="newest deployments of each service kept besides the live one "
    f"[default: BUILDQ_KEEP_DEPLOYMENTS, else {DEFAULT_KEEP_RECENT}]",
)
def gc(dry_run: bool, grace: str, keep: int | None) -> None:
    """Delete published files no kept deployment references (talks to Redis and S3)."""
    grace_s = parse_duration_s(grace)
    if grace_s < MIN_GRACE_S:
        raise click.BadParameter(
            f"{grace!r} is shorter than an hour: a publish in flight could lose files",
            param_hint="--grace",
        )
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> Collection:
        storage = open_storage(settings)
        return await collect(
            storage,
            lambda: live_deployments(settings, storage),
            grace_s=grace_s,
            keep_recent=keep or settings.keep_deployments,
            dry_run=dry_run,
        )

    try:
        result = anyio.run(run)
    except (BuildqError, RedisError, OSError, ValueError) as exc:
        raise click.ClickException(f"gc stopped, nothing more deleted: {exc}") from None
    if dry_run:
        for job_id in result.deleted_manifests:
            click.echo(f"would delete {manifest_key(job_id)}")
        for key in result.deleted_blobs:
            click.echo(f"would delete {key}")
    click.echo(_report(result))
