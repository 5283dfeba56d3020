"""Build caches per service: keys, bounds, and never one service's cache in another's build."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import fakeredis
import pytest

from deployer.buildconfig import BuildConfig, detect
from deployer.cache import BuildCache, restore_cache
from deployer.cacheplan import CacheKind, CachePlan, fits, plan_cache, read_plan, stale_keys
from shared.core.settings import Settings, load_settings
from shared.engine.logs import LogWriter, read_log
from shared.redis.keys import Keys
from shared.storage.localdir import LocalStorage

pytestmark = pytest.mark.anyio

PACKAGE = {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "^5.0.0"}}
LOCK = ("package-lock.json", b'{"lockfileVersion": 3}')


def plan(service: str = "shop", **overrides: object) -> CachePlan:
    args: dict[str, object] = {
        "command": "npm install && npm run build",
        "outputs": ("dist", "build"),
        "in_repository": False,
    }
    args.update(overrides)
    return plan_cache(service, PACKAGE, {"package-lock.json"}, LOCK, **args)  # type: ignore[arg-type]


def test_keys_name_the_service_the_kind_and_the_lockfile() -> None:
    shop = plan()
    assert shop.key(CacheKind.PACKAGES) == "cache/shop/pm-npm.tar.zst"
    key = shop.key(CacheKind.NODE_MODULES)
    assert key == f"cache/shop/node_modules-{shop.lock_hash[:16]}.tar.zst"
    assert shop.header(CacheKind.NODE_MODULES) == {
        "service": "shop", "kind": "node_modules", "key": shop.lock_hash[:16],
    }  # fmt: skip
    other_lock = plan_cache(
        "shop", PACKAGE, {"package-lock.json"}, ("package-lock.json", b"{}"),
        command="npm install", outputs=("dist",), in_repository=False,
    )  # fmt: skip
    assert other_lock.key(CacheKind.NODE_MODULES) != key
    assert other_lock.key(CacheKind.PACKAGES) == shop.key(CacheKind.PACKAGES)


def test_two_services_never_share_a_key_or_a_header() -> None:
    a, b = plan("a"), plan("a-b")
    for kind in CacheKind:
        assert a.key(kind) != b.key(kind)
        assert not b.key(kind).startswith("cache/a/")
        assert a.header(kind) != b.header(kind)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"command": "npm ci && npm run build"}, "npm ci removes node_modules"),
        ({"command": "cd web; npm clean-install"}, "npm ci removes node_modules"),
        ({"outputs": (".",)}, "output directory"),
        ({"outputs": ("node_modules/pkg/dist",)}, "output directory"),
        ({"in_repository": True}, "its own node_modules"),
    ],
)
def test_node_modules_is_left_alone_where_it_could_not_help_or_could_reach_the_output(
    overrides: dict[str, object], why: str
) -> None:
    shop = plan(**overrides)
    assert not shop.node_modules
    assert why in shop.why_not
    assert shop.kinds() == (CacheKind.PACKAGES,)


def test_detected_npm_ci_keys_node_modules_by_lockfile_and_package_json() -> None:
    def ci(package_json: bytes, *, detected: bool = True) -> CachePlan:
        return plan_cache(
            "shop", PACKAGE, {"package-lock.json"}, LOCK, command="npm ci && npm run build",
            outputs=("dist",), in_repository=False, detected=detected, package_json=package_json,
        )  # fmt: skip

    a, b = ci(b'{"name": "a"}'), ci(b'{"name": "b"}')
    assert a.node_modules
    assert a.install_step == "npm ci && "
    assert a.key(CacheKind.NODE_MODULES) != b.key(CacheKind.NODE_MODULES)
    assert a.key(CacheKind.NODE_MODULES) != plan().key(CacheKind.NODE_MODULES)
    written = ci(b'{"name": "a"}', detected=False)  # the repository's own: runs as written
    assert not written.node_modules
    assert written.install_step == ""


def test_a_restored_node_modules_stands_in_for_the_detected_npm_ci(tmp_path: Path) -> None:
    plan_ci = dataclasses.replace(plan(), install_step="npm ci && ")
    cache = BuildCache(None, plan_ci, tmp_path, tmp_path, tmp_path, 1)  # type: ignore[arg-type]
    assert cache.command("npm ci && npm run build") == "npm ci && npm run build"
    cache.restored[CacheKind.PACKAGES] = {}
    assert cache.command("npm ci && npm run build") == "npm ci && npm run build"
    cache.restored[CacheKind.NODE_MODULES] = {}
    assert cache.command("npm ci && npm run build") == "npm run build"
    plain = BuildCache(None, plan(), tmp_path, tmp_path, tmp_path, 1)  # type: ignore[arg-type]
    plain.restored[CacheKind.NODE_MODULES] = {}
    assert plain.command("npm ci && npm run build") == "npm ci && npm run build"


def test_the_manager_comes_from_the_lockfile() -> None:
    pnpm = plan_cache(
        "shop", PACKAGE, {"pnpm-lock.yaml"}, ("pnpm-lock.yaml", b"lockfileVersion: 9"),
        command="corepack pnpm install --frozen-lockfile", outputs=("dist",),
        in_repository=False,
    )  # fmt: skip
    assert pnpm.key(CacheKind.PACKAGES) == "cache/shop/pm-pnpm.tar.zst"
    assert pnpm.node_modules


def test_caches_are_saved_in_order_while_they_fit_the_bound() -> None:
    sizes = {CacheKind.PACKAGES: 600, CacheKind.NODE_MODULES: 500}
    assert fits(sizes, 1100) == [CacheKind.PACKAGES, CacheKind.NODE_MODULES]
    assert fits(sizes, 1000) == [CacheKind.PACKAGES]
    assert fits(sizes, 500) == [CacheKind.NODE_MODULES]
    assert fits(sizes, 10) == []


def test_only_the_same_kind_of_the_same_service_is_replaced() -> None:
    shop = plan("shop")
    listed = [
        "cache/shop/node_modules-0123456789abcdef.tar.zst",
        shop.key(CacheKind.NODE_MODULES),
        shop.key(CacheKind.PACKAGES),
        "cache/shop/pm-yarn.tar.zst",
        "cache/shop-2/node_modules-0123456789abcdef.tar.zst",
    ]
    assert stale_keys(listed, shop, CacheKind.NODE_MODULES) == [
        "cache/shop/node_modules-0123456789abcdef.tar.zst"
    ]
    assert stale_keys(listed, shop, CacheKind.PACKAGES) == ["cache/shop/pm-yarn.tar.zst"]


def write_app(checkout: Path, lock: bytes = b"lockfileVersion: 9") -> None:
    """A pnpm app (``npm ci`` would leave node_modules out)."""
    checkout.mkdir(parents=True, exist_ok=True)
    (checkout / "package.json").write_text(json.dumps(PACKAGE))
    (checkout / "pnpm-lock.yaml").write_bytes(lock)


def fake_install(workdir: Path, checkout: Path) -> None:
    """What an install leaves: npm's cache in HOME and node_modules with a bin link."""
    cacache = workdir / "home/.npm/_cacache/content-v2"
    cacache.mkdir(parents=True, exist_ok=True)
    (cacache / "sha512-abc").write_bytes(b"tarball" * 100)
    (workdir / "home/.npm/_logs").mkdir(exist_ok=True)
    (workdir / "home/.npm/_logs/debug.log").write_text("not cached")
    bin_dir = checkout / "node_modules/.bin"
    (checkout / "node_modules/vite/bin").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    (checkout / "node_modules/vite/bin/vite.js").write_text("// vite")
    if not (bin_dir / "vite").is_symlink():
        os.symlink("../vite/bin/vite.js", bin_dir / "vite")
    (checkout / "node_modules/.package-lock.json").write_text("{}")
    (checkout / "node_modules/.tmp").mkdir(exist_ok=True)  # a build tool's, new each build
    (checkout / "node_modules/.tmp/app.tsbuildinfo").write_text(checkout.parent.name)


class Build:
    """One build's directories, its log, and the cache calls the pipeline makes."""

    def __init__(self, root: Path, job: str, storage: LocalStorage, redis: object) -> None:
        self.workdir = root / job
        self.checkout = self.workdir / "src"
        self.job = job
        self.storage = storage
        self.keys = Keys("unit")
        self.redis = redis
        self.writer = LogWriter(redis, self.keys, job, max_bytes=100_000, max_entries=1000)  # type: ignore[arg-type]

    async def restore(self, service: str, settings: Settings) -> BuildCache | None:
        config = detect(self.checkout)
        return await restore_cache(
            self.storage, settings, self.writer, service=service, config=config,
            checkout=self.checkout, workdir=self.workdir,
        )  # fmt: skip

    async def log(self) -> str:
        entries = await read_log(self.redis, self.keys, self.job)  # type: ignore[arg-type]
        return "\n".join(e.text for e in entries)


@pytest.fixture
async def storage(tmp_path: Path) -> LocalStorage:
    bucket = LocalStorage(tmp_path / "bucket", "buildq")
    await bucket.ensure_bucket()
    return bucket


async def test_a_second_build_gets_its_caches_and_another_service_does_not(
    tmp_path: Path, storage: LocalStorage, redis: fakeredis.FakeAsyncRedis, settings: Settings
) -> None:
    first = Build(tmp_path, "job1", storage, redis)
    write_app(first.checkout)
    cache = await first.restore("shop", settings)
    assert cache is not None
    fake_install(first.workdir, first.checkout)
    await cache.save(first.writer)
    log = await first.log()
    assert "no build cache for shop yet" in log
    assert "saved build cache (pnpm 1 KB as " in log
    assert ", node_modules for lockfile " in log
    stored = sorted(o.key for o in await storage.list_objects("cache/"))
    assert stored == sorted(cache.plan.key(k) for k in CacheKind)

    second = Build(tmp_path, "job2", storage, redis)
    write_app(second.checkout)
    cache2 = await second.restore("shop", settings)
    assert cache2 is not None
    assert (second.checkout / "node_modules/.bin/vite").read_text() == "// vite"
    assert (second.workdir / "home/.npm/_cacache/content-v2/sha512-abc").exists()
    assert not (second.workdir / "home/.npm/_logs").exists()
    assert not (second.checkout / "node_modules/.tmp").exists()
    fake_install(second.workdir, second.checkout)  # rewrites the hidden lockfile, same bytes
    await cache2.save(second.writer)
    log2 = await second.log()
    assert "restored build cache (pnpm" in log2
    assert "node_modules for lockfile" in log2
    assert "; npm_config_prefer_offline=true" in log2
    assert cache2.build_env({"A": "1"}) == {"A": "1", "npm_config_prefer_offline": "true"}
    assert cache2.build_env({"npm_config_prefer_offline": "false"}) == {
        "npm_config_prefer_offline": "false"  # the build's own env wins
    }
    assert cache.build_env({"A": "1"}) == {"A": "1"}  # nothing was restored
    assert "build cache unchanged (pnpm 1 KB, node_modules" in log2
    assert "saved build cache" not in log2

    other = Build(tmp_path, "job3", storage, redis)
    write_app(other.checkout)
    assert await other.restore("blog", settings) is not None
    assert "no build cache for blog yet" in await other.log()
    assert not (other.checkout / "node_modules").exists()
    assert not (other.workdir / "home/.npm").exists()


async def test_npm_with_node_modules_restored_needs_no_package_cache(
    tmp_path: Path, storage: LocalStorage, redis: fakeredis.FakeAsyncRedis, settings: Settings
) -> None:
    def write_npm_app(checkout: Path, version: str) -> None:
        checkout.mkdir(parents=True, exist_ok=True)
        package = {**PACKAGE, "devDependencies": {"vite": version}}
        (checkout / "package.json").write_text(json.dumps(package))  # no lockfile: npm install

    first = Build(tmp_path, "job1", storage, redis)
    write_npm_app(first.checkout, "^5.0.0")
    cache = await first.restore("shop", settings)
    assert cache is not None
    assert cache.plan.manager == "npm"
    fake_install(first.workdir, first.checkout)
    await cache.save(first.writer)
    stored = sorted(o.key for o in await storage.list_objects("cache/shop/"))
    assert stored == sorted(cache.plan.key(k) for k in CacheKind)

    second = Build(tmp_path, "job2", storage, redis)
    write_npm_app(second.checkout, "^5.0.0")
    cache2 = await second.restore("shop", settings)
    assert cache2 is not None
    assert (second.checkout / "node_modules/.bin/vite").read_text() == "// vite"
    assert not (second.workdir / "home/.npm").exists()  # not fetched: not needed
    assert cache2.build_env({})["npm_config_prefer_offline"] == "true"
    fake_install(second.workdir, second.checkout)
    (second.checkout / "node_modules/.package-lock.json").write_text('{"rewritten": true}')
    await cache2.save(second.writer)
    log2 = await second.log()
    assert "; npm cache not needed; npm_config_prefer_offline=true" in log2
    assert "build cache unchanged (node_modules for package.json" in log2
    assert "saved build cache" not in log2
    assert sorted(o.key for o in await storage.list_objects("cache/shop/")) == stored

    third = Build(tmp_path, "job3", storage, redis)  # new dependencies: a new node_modules
    write_npm_app(third.checkout, "^6.0.0")
    cache3 = await third.restore("shop", settings)
    assert cache3 is not None
    assert not cache3.skipped
    assert (third.workdir / "home/.npm/_cacache/content-v2/sha512-abc").exists()
    assert not (third.checkout / "node_modules").exists()
    assert "restored build cache (npm 1 KB) in " in await third.log()


async def test_a_cache_copied_under_another_service_is_refused_and_the_build_goes_on(
    tmp_path: Path, storage: LocalStorage, redis: fakeredis.FakeAsyncRedis, settings: Settings
) -> None:
    first = Build(tmp_path, "job1", storage, redis)
    write_app(first.checkout)
    cache = await first.restore("shop", settings)
    assert cache is not None
    fake_install(first.workdir, first.checkout)
    await cache.save(first.writer)
    blog = dataclasses.replace(cache.plan, service="blog")
    for kind in CacheKind:  # as if someone copied shop's objects to blog's keys
        source = tmp_path / f"{kind.value}.tar.zst"
        await storage.get_to_file(cache.plan.key(kind), source)
        await storage.put_file(blog.key(kind), source)

    other = Build(tmp_path, "job2", storage, redis)
    write_app(other.checkout)
    assert await other.restore("blog", settings) is not None

    log = await other.log()
    assert log.count("not restored: cache archive is for") == 2
    assert "no build cache for blog yet" in log
    assert not (other.checkout / "node_modules").exists()
    assert not (other.workdir / "home/.npm/_cacache").exists()


async def test_a_new_lockfile_replaces_the_old_node_modules_key(
    tmp_path: Path, storage: LocalStorage, redis: fakeredis.FakeAsyncRedis, settings: Settings
) -> None:
    keys_seen = []
    for job, lock in (("job1", b'{"v": 1}'), ("job2", b'{"v": 2}')):
        build = Build(tmp_path, job, storage, redis)
        write_app(build.checkout, lock)
        cache = await build.restore("shop", settings)
        assert cache is not None
        fake_install(build.workdir, build.checkout)
        await cache.save(build.writer)
        keys_seen.append(cache.plan.key(CacheKind.NODE_MODULES))
    assert "restored build cache (pnpm" in await build.log()
    assert (
        "node_modules for lockfile" not in (await build.log()).split("restored")[1].split("\n")[0]
    )
    stored = sorted(o.key for o in await storage.list_objects("cache/shop/"))
    assert stored == sorted(["cache/shop/pm-pnpm.tar.zst", keys_seen[1]])


async def test_caches_over_the_bound_are_not_saved(
    tmp_path: Path, storage: LocalStorage, redis: fakeredis.FakeAsyncRedis
) -> None:
    settings = load_settings({"BUILDQ_BUILD_CACHE_MB": "1"})
    build = Build(tmp_path, "job1", storage, redis)
    write_app(build.checkout)
    cache = await build.restore("shop", settings)
    assert cache is not None
    fake_install(build.workdir, build.checkout)
    (build.checkout / "node_modules/huge.bin").write_bytes(b"\0" * (2 * 1024 * 1024))
    await cache.save(build.writer)

    log = await build.log()
    assert "not saved: the service's caches exceed BUILDQ_BUILD_CACHE_MB=1" in log
    assert [o.key for o in await storage.list_objects("cache/")] == ["cache/shop/pm-pnpm.tar.zst"]


async def test_the_cache_can_be_turned_off_and_is_only_for_node_builds(
    tmp_path: Path, storage: LocalStorage, redis: fakeredis.FakeAsyncRedis, settings: Settings
) -> None:
    build = Build(tmp_path, "job1", storage, redis)
    write_app(build.checkout)
    off = load_settings({"BUILDQ_BUILD_CACHE": "false"})
    assert await build.restore("shop", off) is None
    shutil.rmtree(build.checkout)
    build.checkout.mkdir(parents=True)
    (build.checkout / "index.html").write_text("hi")
    assert await build.restore("shop", settings) is None
    assert await build.log() == ""


def test_the_plan_reads_the_checkout(tmp_path: Path) -> None:
    write_app(tmp_path)
    (tmp_path / "pnpm-lock.yaml").rename(tmp_path / "package-lock.json")
    found = read_plan("shop", detect(tmp_path), tmp_path)
    assert found is not None
    assert found.manager == "npm"
    assert found.node_modules  # detected npm ci: keyed by the lockfile and package.json
    assert found.install_step == "npm ci && "
    written = BuildConfig("buildq.toml", "npm ci && npm run build", ("dist",))
    found = read_plan("shop", written, tmp_path)
    assert found is not None
    assert not found.node_modules  # someone wrote npm ci: it runs, and removes node_modules
    (tmp_path / "package-lock.json").unlink()
    found = read_plan("shop", detect(tmp_path), tmp_path)
    assert found is not None
    assert found.node_modules
    assert found.lock_name == "package.json"
    assert found.install_step == "npm install && "
    written = BuildConfig("buildq.toml", "npm install && npm run build", ("dist",))
    found = read_plan("shop", written, tmp_path)
    assert found is not None
    assert found.install_step == ""  # someone wrote it: it runs
    assert read_plan("shop", BuildConfig("static", None), tmp_path) is None
