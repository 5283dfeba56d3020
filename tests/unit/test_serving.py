"""Sites on their own origin (uploader/sites.py) and static-host conventions
(uploader/static_files.py), against moto's S3 API in-process and fakeredis."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from fastapi import FastAPI

import deployer.packs
from deployer.publish import Target, publish_site
from shared.core.settings import Settings, load_settings
from shared.core.siteaddr import SiteHost, SiteKind, parse_host, preview_url, site_url
from shared.engine.jobs import JobStore
from shared.redis.keys import Keys
from shared.storage.manifest import blob_key, manifest_key
from shared.storage.s3 import (
    S3Storage,
    Storage,
    content_type,
    make_s3_client,
    serve_key,
    site_prefix,
)
from uploader import serving
from uploader.sites import Deployments, SitesOrigin
from uploader.state import Services
from uploader.static_files import is_hashed, parse_range

pytestmark = pytest.mark.anyio

LIVE = "aaaaaaaaaaaaaaaaaaaa"
SPA = "bbbbbbbbbbbbbbbbbbbb"
FILES = {
    "index.html": "<h1>home</h1>",
    "about.html": "<h1>about</h1>",
    "docs/index.html": "<h1>docs</h1>",
    "blog.html": "<h1>blog</h1>",
    "404.html": "<h1>lost</h1>",
    "assets/index-DiwrgTda.js": "console.log('app')",
    "data.txt": "0123456789",
}


# --- addresses -------------------------------------------------------------


def test_sites_live_at_the_root_of_their_own_localhost_host() -> None:
    settings = load_settings({})

    assert site_url(settings, "shop") == "http://shop.localhost:8001/"
    assert preview_url(settings, LIVE) == f"http://{LIVE}.preview.localhost:8001/"


def test_a_real_domain_gets_https_without_a_port() -> None:
    settings = load_settings({"BUILDQ_SITES_DOMAIN": "example.net"})

    assert site_url(settings, "shop") == "https://shop.example.net/"


def test_public_port_and_scheme_can_be_set() -> None:
    settings = load_settings(
        {
            "BUILDQ_SITES_DOMAIN": "apps.internal",
            "BUILDQ_SITES_SCHEME": "http",
            "BUILDQ_SITES_PUBLIC_PORT": "8443",
        }
    )

    assert site_url(settings, "shop") == "http://shop.apps.internal:8443/"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("shop.localhost:8001", SiteHost(SiteKind.LIVE, "shop")),
        ("SHOP.LOCALHOST", SiteHost(SiteKind.LIVE, "shop")),
        ("shop.localhost.", SiteHost(SiteKind.LIVE, "shop")),
        (f"{LIVE}.preview.localhost:8001", SiteHost(SiteKind.PREVIEW, LIVE)),
        ("preview.localhost", SiteHost(SiteKind.LIVE, "preview")),
        ("localhost:8001", None),
        ("127.0.0.1:8001", None),
        ("[::1]:8001", None),
        ("shop.evil.example", None),
        ("a.b.localhost", None),
        ("xyz.preview.localhost", None),
        ("-x.localhost", None),
        ("shop.localhost.evil.example", None),
        ("", None),
    ],
)
def test_the_host_names_one_site_or_none(host: str, expected: SiteHost | None) -> None:
    assert parse_host(load_settings({}), host) == expected


# --- pure conventions ------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "hashed"),
    [
        ("assets/index-DiwrgTda.js", True),  # Vite
        ("assets/index-CAoPt-vL.js", True),  # base64url hashes may hold "-"
        ("assets/vite-BF8QNONU.svg", True),
        ("assets/react-CHdo91hT.svg", True),
        ("static/js/main.3f2a1b9c.js", True),  # CRA
        ("static/js/787.a1b2c3d4.chunk.js", True),
        ("_astro/index.BxD9G3eE.css", True),  # Astro
        ("_next/static/chunks/app.js", True),  # Next.js
        ("index.html", False),
        ("page.3f2a1b9c.html", False),  # pages always revalidate
        ("app.js", False),
        ("bootstrap.min.js", False),
        ("MyWidget.js", False),
        ("fonts/MaterialIcons-Regular.woff2", False),
        ("vendor/jquery-3.6.0.min.js", False),
        ("my-component-library.js", False),
        ("archive-2024.tar.gz", False),
    ],
)
def test_hashed_asset_names_are_recognised(rel: str, hashed: bool) -> None:
    assert is_hashed(rel) is hashed


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-3", (0, 3)),
        ("bytes=5-", (5, None)),
        ("bytes=-4", (-4, None)),
        ("bytes=4-2", None),
        ("bytes=0-1,4-5", None),  # several ranges: served whole
        ("items=0-1", None),
        ("bytes=-0", None),
        ("bytes=-", None),
    ],
)
def test_single_byte_ranges_are_parsed(header: str | None, expected: object) -> None:
    assert parse_range(header) == expected


# --- the sites origin ------------------------------------------------------


@pytest.fixture
async def app(
    aws: None, redis: fakeredis.FakeAsyncRedis, keys: Keys, settings: Settings
) -> SitesOrigin:
    storage = S3Storage(make_s3_client(settings), "unit-sites", concurrency=4)
    await storage.ensure_bucket()
    for job_id, spa in ((LIVE, False), (SPA, True)):
        for rel, text in FILES.items():
            await storage.put_bytes(
                site_prefix(job_id) + rel, text.encode(), mime=content_type(rel)
            )
        await storage.put_bytes(serve_key(job_id), json.dumps({"spa": spa}).encode(), mime="x")
    await redis.hset(keys.site("shop"), mapping={"id": LIVE})
    await redis.hset(keys.site("app"), mapping={"id": SPA})
    api = FastAPI()
    api.include_router(serving.router)

    @api.get("/deployments")
    async def deployments() -> list[str]:
        return ["api-only"]

    api.state.services = Services(settings, keys, redis, storage, JobStore(redis, keys, settings))
    return SitesOrigin(api, settings.sites_port)


@pytest.fixture
async def shop(app: SitesOrigin) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.localhost:8001") as c:
        yield c


async def get(client: httpx.AsyncClient, path: str, **headers: str) -> httpx.Response:
    return await client.get(path, headers=headers)


async def test_clean_urls_serve_name_html(shop: httpx.AsyncClient) -> None:
    about = await get(shop, "/about")

    assert (about.status_code, about.text) == (200, FILES["about.html"])
    assert about.headers["content-type"].startswith("text/html")


async def test_a_directory_without_its_slash_redirects_and_keeps_the_query(
    shop: httpx.AsyncClient,
) -> None:
    moved = await get(shop, "/docs?x=1")

    assert moved.status_code == 308
    assert moved.headers["location"] == "/docs/?x=1"
    assert (await get(shop, "/docs/")).text == FILES["docs/index.html"]


async def test_a_trailing_slash_on_a_page_redirects_to_the_clean_url(
    shop: httpx.AsyncClient,
) -> None:
    moved = await get(shop, "/blog/")

    assert (moved.status_code, moved.headers["location"]) == (308, "/blog")


async def test_missing_paths_get_the_sites_own_404_page(shop: httpx.AsyncClient) -> None:
    for path in ("/nowhere", "/nowhere.js", "/docs/deeper/", "/../../etc/passwd"):
        missing = await get(shop, path)
        assert (missing.status_code, missing.text) == (404, FILES["404.html"]), path


async def test_single_page_apps_get_index_for_extensionless_paths(app: SitesOrigin) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.localhost:8001") as c:
        route = await c.get("/dashboard/settings")
        asset = await c.get("/assets/missing-AbCdEfGh.js")

    assert (route.status_code, route.text) == (200, FILES["index.html"])
    assert asset.status_code == 404  # a missing file is not the app


async def test_hashed_assets_are_immutable_and_pages_revalidate(shop: httpx.AsyncClient) -> None:
    asset = await get(shop, "/assets/index-DiwrgTda.js")
    page = await get(shop, "/")

    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["etag"]
    assert page.headers["last-modified"].endswith(" GMT")
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_a_matching_etag_gets_304_without_a_body(shop: httpx.AsyncClient) -> None:
    etag = (await get(shop, "/")).headers["etag"]

    again = await get(shop, "/", **{"If-None-Match": etag})
    other = await get(shop, "/", **{"If-None-Match": '"other"'})

    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == etag
    assert (other.status_code, other.text) == (200, FILES["index.html"])


async def test_head_sends_headers_and_no_body(shop: httpx.AsyncClient) -> None:
    head = await shop.head("/data.txt")

    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == "10"
    assert head.headers["content-type"].startswith("text/plain")


async def test_byte_ranges(shop: httpx.AsyncClient) -> None:
    first = await get(shop, "/data.txt", Range="bytes=0-3")
    tail = await get(shop, "/data.txt", Range="bytes=-3")
    rest = await get(shop, "/data.txt", Range="bytes=7-")
    past = await get(shop, "/data.txt", Range="bytes=50-")

    assert (first.status_code, first.text) == (206, "0123")
    assert first.headers["content-range"] == "bytes 0-3/10"
    assert (tail.text, tail.headers["content-range"]) == ("789", "bytes 7-9/10")
    assert (rest.text, rest.headers["content-range"]) == ("789", "bytes 7-9/10")
    assert (past.status_code, past.headers["content-range"]) == (416, "bytes */10")


async def test_previews_are_served_at_their_own_host(app: SitesOrigin) -> None:
    transport = httpx.ASGITransport(app=app)
    base = f"http://{SPA}.preview.localhost:8001"
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        page = await client.get("/")

    assert page.text == FILES["index.html"]


async def test_unknown_hosts_and_services_are_404(app: SitesOrigin) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        other = await client.get("http://evil.example:8001/")
        nobody = await client.get("http://nobody.localhost:8001/")
        bare = await client.get("http://127.0.0.1:8001/")

    assert other.status_code == nobody.status_code == bare.status_code == 404
    assert "no live deployment" in nobody.text


async def test_no_api_route_answers_on_the_sites_listener(shop: httpx.AsyncClient) -> None:
    assert (await get(shop, "/deployments")).status_code == 404
    assert (await shop.post("/", json={})).status_code == 405


async def test_the_api_origin_redirects_site_paths_to_the_sites_origin(app: SitesOrigin) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        site = await c.get("/sites/shop/docs/?a=b")
        preview = await c.get(f"/preview/{LIVE}")
        bad = await c.get("/sites/Bad_Name/")
        api = await c.get("/deployments")

    assert site.headers["location"] == "http://shop.localhost:8001/docs/?a=b"
    assert preview.headers["location"] == f"http://{LIVE}.preview.localhost:8001/"
    assert bad.status_code == 404
    assert api.json() == ["api-only"]


async def test_large_files_stream_whole_and_in_ranges(app: SitesOrigin) -> None:
    svc: Services = app.app.state.services
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: past the inline read
    await svc.storage.put_bytes(site_prefix(LIVE) + "big.bin", big, mime="application/x-big")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.localhost:8001") as c:
        whole = await c.get("/big.bin")
        middle = await c.get("/big.bin", headers={"Range": "bytes=1048000-2200000"})

    assert whole.content == big
    assert whole.headers["content-length"] == str(len(big))
    assert middle.status_code == 206
    assert middle.content == big[1048000:2200001]
    assert middle.headers["content-range"] == f"bytes 1048000-2200000/{len(big)}"


# --- deployments published as blobs and a manifest ----------------------------------

BLOBS = "cccccccccccccccccccc"
BLOBS_SPA = "dddddddddddddddddddd"


@pytest.fixture(params=["blobs", "packs"])
async def blob_app(
    app: SitesOrigin,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> SitesOrigin:
    """The same files as LIVE and SPA, published through manifests (``blob``, ``spa2``):
    one blob per file, or packed (two packs of several files each)."""
    if request.param == "packs":
        monkeypatch.setattr(deployer.packs, "PACK_MIN_FILES", 2)
        monkeypatch.setattr(deployer.packs, "PACK_TARGET_BYTES", 40)
    svc: Services = app.app.state.services
    out = tmp_path / "out"
    for rel, text in FILES.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    for job_id, service, spa in ((BLOBS, "blob", False), (BLOBS_SPA, "spa2", True)):
        target = Target(job_id, service, 1, spa)
        await publish_site(svc.storage, out, target, max_files=100, max_bytes=10**6, concurrency=4)
        await svc.redis.hset(svc.keys.site(service), mapping={"id": job_id})
    return app


@pytest.fixture
async def blob(blob_app: SitesOrigin) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=blob_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://blob.localhost:8001") as c:
        yield c


def no_heads(app: SitesOrigin, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every S3 HEAD and GET the sites origin makes from now on."""
    storage: Storage = app.app.state.services.storage
    calls: list[str] = []
    head, read = storage.head, storage.read

    async def counted_head(key: str) -> Any:
        calls.append(f"HEAD {key}")
        return await head(key)

    async def counted_read(key: str, **kwargs: Any) -> Any:
        calls.append(f"GET {key}")
        return await read(key, **kwargs)

    monkeypatch.setattr(storage, "head", counted_head)
    monkeypatch.setattr(storage, "read", counted_read)
    return calls


async def test_a_manifest_site_follows_the_static_host_conventions(
    blob: httpx.AsyncClient, blob_app: SitesOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await get(blob, "/")  # the manifest is read once, then cached
    calls = no_heads(blob_app, monkeypatch)

    about = await get(blob, "/about")
    docs = await get(blob, "/docs?x=1")
    page = await get(blob, "/blog/")
    missing = await get(blob, "/nowhere")
    traversal = await get(blob, "/../../etc/passwd")
    asset = await get(blob, "/assets/index-DiwrgTda.js")

    assert (about.status_code, about.text) == (200, FILES["about.html"])
    assert about.headers["content-type"] == "text/html; charset=utf-8"
    assert (docs.status_code, docs.headers["location"]) == (308, "/docs/?x=1")
    assert (page.status_code, page.headers["location"]) == (308, "/blog")
    assert (missing.status_code, missing.text) == (404, FILES["404.html"])
    assert (traversal.status_code, traversal.text) == (404, FILES["404.html"])
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert not [c for c in calls if c.startswith("HEAD") or "manifests/" in c]
    assert all(c.startswith("GET blobs/") for c in calls)


async def test_a_manifest_sites_etag_is_the_content_hash(
    blob: httpx.AsyncClient, blob_app: SitesOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = await get(blob, "/")
    calls = no_heads(blob_app, monkeypatch)
    again = await get(blob, "/", **{"If-None-Match": home.headers["etag"]})
    head = await blob.head("/data.txt")

    digest = hashlib.sha256(FILES["index.html"].encode()).hexdigest()
    assert home.headers["etag"] == f'"{digest}"'
    assert home.headers["last-modified"].endswith(" GMT")
    assert (again.status_code, again.content) == (304, b"")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "10")
    assert calls == []  # both answered from the manifest alone


async def test_a_manifest_site_serves_byte_ranges(blob: httpx.AsyncClient) -> None:
    first = await get(blob, "/data.txt", Range="bytes=0-3")
    tail = await get(blob, "/data.txt", Range="bytes=-3")
    rest = await get(blob, "/data.txt", Range="bytes=7-")
    past = await get(blob, "/data.txt", Range="bytes=50-")

    assert (first.status_code, first.text, first.headers["content-range"]) == (
        206,
        "0123",
        "bytes 0-3/10",
    )
    assert (tail.text, tail.headers["content-range"]) == ("789", "bytes 7-9/10")
    assert (rest.text, rest.headers["content-range"]) == ("789", "bytes 7-9/10")
    assert (past.status_code, past.headers["content-range"]) == (416, "bytes */10")


async def test_a_manifest_spa_gets_index_for_routes(blob_app: SitesOrigin) -> None:
    transport = httpx.ASGITransport(app=blob_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spa2.localhost:8001") as c:
        route = await c.get("/dashboard/settings")
        asset = await c.get("/assets/missing-AbCdEfGh.js")
    async with httpx.AsyncClient(
        transport=transport, base_url=f"http://{BLOBS_SPA}.preview.localhost:8001"
    ) as c:
        preview = await c.get("/")

    assert (route.status_code, route.text) == (200, FILES["index.html"])
    assert asset.status_code == 404
    assert preview.text == FILES["index.html"]


async def test_legacy_and_manifest_deployments_are_served_side_by_side(
    blob_app: SitesOrigin,
) -> None:
    transport = httpx.ASGITransport(app=blob_app)
    async with httpx.AsyncClient(transport=transport) as c:
        legacy = await c.get("http://shop.localhost:8001/about")
        blobbed = await c.get("http://blob.localhost:8001/about")

    assert legacy.text == blobbed.text == FILES["about.html"]
    assert legacy.headers["etag"] != blobbed.headers["etag"]  # S3's ETag vs the hash


async def test_a_hostile_manifest_is_refused_not_served(app: SitesOrigin) -> None:
    svc: Services = app.app.state.services
    hostile = {
        "version": 1,
        "service": "evil",
        "seq": 1,
        "parent": None,
        "spa": False,
        "files": {"../../sources/x": {"sha256": "0" * 64, "size": 1, "type": "text/plain"}},
    }
    await svc.storage.put_json(manifest_key(BLOBS), hostile)
    await svc.redis.hset(svc.keys.site("evil"), mapping={"id": BLOBS})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.localhost:8001") as c:
        page = await c.get("/")

    assert page.status_code == 502
    assert "manifest is invalid" in page.text


async def test_a_missing_blob_is_a_storage_fault_not_a_404(
    blob_app: SitesOrigin, blob: httpx.AsyncClient
) -> None:
    svc: Services = blob_app.app.state.services
    loaded = await Deployments(svc.storage).manifests.get(BLOBS)
    assert loaded is not None
    await svc.storage.delete_keys([blob_key(loaded.manifest.files["about.html"].blob)])

    about = await get(blob, "/about.html")

    assert about.status_code == 503


async def test_packed_files_are_served_from_their_span_of_the_pack(
    app: SitesOrigin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deployer.packs, "PACK_MIN_FILES", 2)
    monkeypatch.setattr(deployer.packs, "PACK_FILE_MAX_BYTES", 4 * 1024 * 1024)
    svc: Services = app.app.state.services
    out = tmp_path / "packed"
    big = bytes(range(256)) * (5 * 1024 + 3)  # past the inline read: the rest streams
    files = {"a.txt": b"first file", "big.bin": big, "z.txt": b"last file"}
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    await publish_site(
        svc.storage, out, Target(BLOBS, "packed", 1, False), max_files=10, max_bytes=10**7,
        concurrency=2,
    )  # fmt: skip
    await svc.redis.hset(svc.keys.site("packed"), mapping={"id": BLOBS})
    loaded = await Deployments(svc.storage).manifests.get(BLOBS)
    assert loaded is not None
    assert len(loaded.manifest.blobs()) == 1  # all three in one pack
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://packed.localhost:8001") as c:
        got = {rel: await c.get(f"/{rel}") for rel in files}
        middle = await c.get("/big.bin", headers={"Range": "bytes=1000-1200000"})
        tail = await c.get("/z.txt", headers={"Range": "bytes=-4"})
        head = await c.head("/a.txt")

    for rel, data in files.items():
        assert (got[rel].status_code, got[rel].content) == (200, data)
        assert got[rel].headers["content-length"] == str(len(data))
        assert got[rel].headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert (middle.status_code, middle.content) == (206, big[1000:1200001])
    assert middle.headers["content-range"] == f"bytes 1000-1200000/{len(big)}"
    assert (tail.status_code, tail.content) == (206, b"file")
    assert tail.headers["content-range"] == "bytes 5-8/9"
    assert (head.status_code, head.headers["content-length"]) == (200, "10")


async def test_a_pack_shorter_than_its_manifest_says_is_a_storage_fault(
    app: SitesOrigin,
) -> None:
    svc: Services = app.app.state.services
    pack = b"0123456789"
    pack_hash = hashlib.sha256(pack).hexdigest()
    await svc.storage.put_bytes(blob_key(pack_hash), pack, mime="application/octet-stream")
    entry = {"sha256": "0" * 64, "type": "text/plain", "pack": pack_hash}
    document = {
        "version": 2, "service": "short", "seq": 1, "parent": None, "spa": False,
        "files": {
            "ok.txt": {**entry, "size": 4, "offset": 2},
            "cut.txt": {**entry, "size": 6, "offset": 7},
            "past.txt": {**entry, "size": 2, "offset": 40},
        },
    }  # fmt: skip
    await svc.storage.put_json(manifest_key(BLOBS), document)
    await svc.redis.hset(svc.keys.site("short"), mapping={"id": BLOBS})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://short.localhost:8001") as c:
        ok, cut, past = [await c.get(f"/{rel}.txt") for rel in ("ok", "cut", "past")]

    assert (ok.status_code, ok.text) == (200, "2345")
    assert cut.status_code == 503
    assert past.status_code == 503
