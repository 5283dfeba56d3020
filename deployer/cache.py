"""Build caches per service: a front-end build's dependencies, kept in the bucket
between builds so that a second ``npm install`` has little left to do.

Two kinds: the package manager's own cache in the build's ``HOME`` (npm's
``_cacache``, pnpm's store, Yarn's caches, corepack's downloads; content-addressed by
the manager, so always restored) and the checkout's ``node_modules``, restored only
for the same lockfile (``package.json`` without one) on the same OS and machine.
Each lives at ``cache/<service>/<kind>-<key>.tar.zst`` and carries a header with its
service, kind and key that restore checks: a service never gets another's cache.
For npm, a restored ``node_modules`` leaves ``npm install`` nothing to fetch, so the
package cache is then neither restored nor saved (half the bytes of a cache hit); for
buildq's detected ``npm ci && …`` it is keyed by the lockfile and package.json, and a
restored one replaces the ``npm ci`` step (:meth:`BuildCache.command`).
Saved after a successful build only when it changed (:func:`deployer.cachetree.changed`),
only within ``BUILDQ_BUILD_CACHE_MB``, replacing the kind's older key. The caches
land outside the output: ``HOME`` is outside the checkout, and ``node_modules`` is
left alone when an output directory could contain it. A cache that cannot be
restored or saved is logged in the job's log and the build goes on without it.
What a build caches is planned in :mod:`deployer.cacheplan`; archives are made and
checked in :mod:`deployer.cachetree`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
import structlog

from deployer.buildconfig import BuildConfig
from deployer.cacheplan import (
    MB,
    NODE_MODULES,
    CacheKind,
    CachePlan,
    cache_prefix,
    fits,
    is_tool_cache,
    megabytes,
    read_plan,
    stale_keys,
)
from deployer.cachetree import (
    CacheTooLarge,
    Node,
    Snapshot,
    changed,
    extract,
    pack,
    shared_inodes,
    walk,
)
from shared.core.settings import Settings
from shared.engine.logs import LogWriter
from shared.storage.objects import ObjectNotFound, Storage
from shared.storage.tarstream import Kind

log = structlog.get_logger("deployer")

HOME_CACHES = (
    ".npm/_cacache",
    ".local/share/pnpm/store",
    ".cache/yarn",
    ".yarn/berry/cache",
    ".cache/node/corepack",
)
MAX_ENTRIES = 1_000_000
PREFER_OFFLINE = "npm_config_prefer_offline"


@dataclass
class BuildCache:
    """One build's caches: restored before it runs, saved after it succeeds."""

    storage: Storage
    plan: CachePlan
    home: Path
    checkout: Path
    workdir: Path
    bound_bytes: int
    restored: dict[CacheKind, Snapshot] = field(default_factory=dict)
    skipped: set[CacheKind] = field(default_factory=set)  # not needed: neither restored nor saved

    def build_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` for the build: with the package cache restored, npm (and pnpm) take
        what it holds without asking the registry again (``prefer-offline``: only what
        is missing is fetched), unless the build's own env says otherwise. Without
        this npm revalidates every package's metadata, which takes seconds and
        rewrites its index, so the cache would be uploaded again after every build."""
        if not self.restored:
            return dict(env)
        return {PREFER_OFFLINE: "true", **env}

    def command(self, command: str) -> str:
        """The command to run: without its install step when the restored
        node_modules stands in for it (see :mod:`deployer.cacheplan`)."""
        step = self.plan.install_step
        if step and CacheKind.NODE_MODULES in self.restored and command.startswith(step):
            return command[len(step) :]
        return command

    def _where(self, kind: CacheKind) -> tuple[Path, tuple[str, ...]]:
        if kind is CacheKind.PACKAGES:
            return self.home, HOME_CACHES
        return self.checkout, (NODE_MODULES,)

    async def restore(self, writer: LogWriter) -> None:
        """Restore every cache the plan names that exists; log what was restored."""
        started = time.monotonic()
        sizes: dict[CacheKind, int | None] = {}
        failures: dict[CacheKind, Exception] = {}

        async def one(kind: CacheKind) -> None:
            try:
                sizes[kind] = await self._restore(kind)
            except Exception as exc:  # a cache is never worth failing the build for
                log.warning("cache.restore_failed", kind=kind.value, error=str(exc))
                await anyio.to_thread.run_sync(self._remove, kind)
                failures[kind] = exc

        kinds = self.plan.kinds()
        if self.plan.manager == "npm" and CacheKind.NODE_MODULES in kinds:
            # npm finds a matching node_modules "up to date" without its cache.
            await one(CacheKind.NODE_MODULES)
            if CacheKind.NODE_MODULES in self.restored:
                self.skipped.add(CacheKind.PACKAGES)
            else:
                await one(CacheKind.PACKAGES)
        else:
            async with anyio.create_task_group() as group:  # the kinds side by side
                for kind in kinds:
                    group.start_soon(one, kind)
        parts: list[str] = []
        for kind in self.plan.kinds():
            if kind in failures:
                await writer.line(
                    f"buildq: build cache ({self.plan.label(kind)}) not restored: {failures[kind]}"
                )
            elif (size := sizes.get(kind)) is not None:
                parts.append(f"{self.plan.label(kind)} {megabytes(size)}")
        skipped = f"; node_modules not cached: {self.plan.why_not}" if self.plan.why_not else ""
        if parts:
            took = time.monotonic() - started
            unneeded = (
                f"; {self.plan.label(CacheKind.PACKAGES)} cache not needed" if self.skipped else ""
            )
            await writer.line(
                f"buildq: restored build cache ({', '.join(parts)}) in {took:.1f} s"
                f"{unneeded}; {PREFER_OFFLINE}=true{skipped}"
            )
        else:
            await writer.line(f"buildq: no build cache for {self.plan.service} yet{skipped}")

    async def _restore(self, kind: CacheKind) -> int | None:
        """The bytes restored, None when the service has no such cache."""
        scratch = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "cache-", self.workdir))
        try:
            archive = scratch / "cache.tar.zst"
            try:
                await self.storage.get_to_file(self.plan.key(kind), archive)
            except ObjectNotFound:
                return None
            root, tops = self._where(kind)
            root.mkdir(parents=True, exist_ok=True)
            header = self.plan.header(kind)
            snapshot = await anyio.to_thread.run_sync(
                lambda: extract(
                    archive,
                    root,
                    header,
                    tops=tops,
                    max_bytes=self.bound_bytes,
                    max_entries=MAX_ENTRIES,
                )
            )
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
        self.restored[kind] = snapshot
        return sum(seen.size for seen in snapshot.values() if seen.kind is Kind.FILE)

    def _remove(self, kind: CacheKind) -> None:
        """Undo a partial restore (blocking)."""
        self.restored.pop(kind, None)
        root, tops = self._where(kind)
        for top in tops:
            path = root / top
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)

    def _walk(self) -> dict[CacheKind, list[Node] | None]:
        """Every kind's tree after the build (None: over the bound), hard links to
        files outside the trees left out."""
        trees: dict[CacheKind, list[Node] | None] = {}
        for kind in self.plan.kinds():
            if kind in self.skipped:
                continue
            root, tops = self._where(kind)
            try:
                trees[kind] = [
                    node
                    for top in tops
                    for node in walk(
                        root, top, max_bytes=self.bound_bytes, max_entries=MAX_ENTRIES
                    )[0]
                    if not is_tool_cache(node.rel)
                ]
            except CacheTooLarge:
                trees[kind] = None
        outside = shared_inodes(node for nodes in trees.values() for node in nodes or ())
        return {
            kind: None
            if nodes is None
            else [n for n in nodes if n.kind is not Kind.FILE or n.inode not in outside]
            for kind, nodes in trees.items()
        }

    async def save(self, writer: LogWriter) -> None:
        """Save the caches that changed, within the bound; log what was saved."""
        started = time.monotonic()
        try:
            trees = await anyio.to_thread.run_sync(self._walk)
        except Exception as exc:
            await writer.line(f"buildq: build cache not saved: {exc}")
            return
        over = self.bound_bytes + 1
        sizes = {
            kind: over if nodes is None else sum(n.size for n in nodes)
            for kind, nodes in trees.items()
            if nodes is None or nodes
        }
        kept = fits(sizes, self.bound_bytes)
        saved: list[str] = []
        same: list[str] = []
        for kind, size in sizes.items():
            nodes = trees[kind]
            if nodes is None or kind not in kept:
                amount = f"over {megabytes(self.bound_bytes)}" if nodes is None else megabytes(size)
                await writer.line(
                    f"buildq: build cache ({self.plan.label(kind)} {amount}) not saved: the "
                    f"service's caches exceed BUILDQ_BUILD_CACHE_MB={self.bound_bytes // MB}"
                )
                continue
            label = f"{self.plan.label(kind)} {megabytes(size)}"
            try:
                compressed = await self._save(kind, nodes)
            except Exception as exc:  # the build succeeded: it stays a success
                log.warning("cache.save_failed", kind=kind.value, error=str(exc))
                await writer.line(f"buildq: build cache ({label}) not saved: {exc}")
                continue
            if compressed is None:
                same.append(label)
            else:
                saved.append(f"{label} as {megabytes(compressed)}")
        took = time.monotonic() - started
        if saved:
            await writer.line(f"buildq: saved build cache ({', '.join(saved)}) in {took:.1f} s")
        if same:
            await writer.line(f"buildq: build cache unchanged ({', '.join(same)}); not uploaded")

    async def _save(self, kind: CacheKind, nodes: list[Node]) -> int | None:
        """The compressed size uploaded, None when the cache is as it was restored."""
        root, _ = self._where(kind)
        before = self.restored.get(kind)
        if not await anyio.to_thread.run_sync(changed, root, before, nodes):
            return None
        scratch = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "cache-", self.workdir))
        try:
            archive = scratch / "cache.tar.zst"
            header = self.plan.header(kind)
            await anyio.to_thread.run_sync(pack, root, nodes, archive, header)
            size = archive.stat().st_size
            key = self.plan.key(kind)
            await self.storage.put_file(key, archive, mime="application/zstd")
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
        listed = [
            obj.key for obj in await self.storage.list_objects(cache_prefix(self.plan.service))
        ]
        old = stale_keys(listed, self.plan, kind)
        if old:
            await self.storage.delete_keys(old)
        return size


async def restore_cache(
    storage: Storage,
    settings: Settings,
    writer: LogWriter,
    *,
    service: str,
    config: BuildConfig,
    checkout: Path,
    workdir: Path,
) -> BuildCache | None:
    """The build's caches, restored; None when caching is off or not a Node build."""
    if not settings.build_cache:
        return None
    try:
        plan = await anyio.to_thread.run_sync(read_plan, service, config, checkout)
    except Exception as exc:
        await writer.line(f"buildq: build cache not used: {exc}")
        return None
    if plan is None:
        return None
    cache = BuildCache(
        storage, plan, workdir / "home", checkout, workdir, settings.build_cache_mb * MB
    )
    await cache.restore(writer)
    return cache
