"""Serving one deployment's files the way people expect of a static host.

- ``/`` and ``/dir/`` serve ``index.html``; ``/dir`` redirects to ``/dir/`` when
  only ``dir/index.html`` exists; clean URLs: ``/about`` serves ``about.html``.
- Not found: single-page apps (``spa``) get ``index.html`` for extension-less
  paths; otherwise the site's own ``404.html`` (status 404) or a plain 404.
- Hashed asset names (``index-DiwrgTda.js``, ``main.3f2a1b9c.js``) are cached for a
  year as immutable; everything else revalidates (``ETag``, ``304``).
- ``HEAD`` and single ``Range`` requests (``206``, ``416``).

Files come from a :class:`FileSource`: the deployment's manifest (path -> blob, or
a byte range of a pack blob; the ETag is the content hash, and existence checks
cost no S3 request), or, for deployments published before manifests, the objects
under ``sites/<id>/``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import structlog
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse

from shared.core.errors import StorageError, ValidationError
from shared.storage.archive import check_name
from shared.storage.manifest import FileRef, Loaded, blob_key
from shared.storage.s3 import Blob, ObjectNotFound, RangeNotSatisfiable, Storage

log = structlog.get_logger("sites")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
BASE_HEADERS = {"X-Content-Type-Options": "nosniff", "Accept-Ranges": "bytes"}
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
HASH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
IMMUTABLE_PREFIXES = ("_next/static/",)  # Next.js content-hashes everything there


def is_hashed(rel: str) -> bool:
    """Whether ``rel`` carries a content hash in its name (so it never changes).

    A hash follows the name after ``-`` or ``.`` and runs to the next ``.``:
    ``index-CAoPt-vL.js`` (Rollup/Vite, base64url, may hold ``-``), ``main.3f2a1b9c.js``
    and ``787.a1b2c3d4.chunk.js`` (webpack, hex).
    """
    if rel.startswith(IMMUTABLE_PREFIXES):
        return True
    name = rel.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else ""
    if not stem or name.endswith(".html"):
        return False
    for index, char in enumerate(stem):
        if index == 0 or char not in "-.":
            continue
        segment = stem[index + 1 :].split(".", 1)[0]
        if not HASH_SEGMENT_RE.fullmatch(segment):
            continue
        if any(c.isdigit() for c in segment):
            return True
        if len(segment) == 8 and any(c.isupper() for c in segment[1:]):
            return True
    return False


async def _chain(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


def parse_range(header: str | None) -> tuple[int, int | None] | None:
    """A single ``bytes=`` range as (start, end or None); None: serve it whole.

    Suffix ranges (``bytes=-N``) come back as (-N, None). Several ranges, or one
    that makes no sense, are ignored, which RFC 9110 allows.
    """
    if not header:
        return None
    match = RANGE_RE.fullmatch(header.strip())
    if not match or not (match[1] or match[2]):
        return None
    if not match[1]:
        return (-int(match[2]), None) if int(match[2]) > 0 else None
    start = int(match[1])
    end = int(match[2]) if match[2] else None
    if end is not None and end < start:
        return None
    return start, end


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` against the object's ETag (weak comparison)."""
    if not header or not etag:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


@dataclass(frozen=True, slots=True)
class Request:
    """What of an HTTP request decides the response."""

    method: str  # GET or HEAD
    path: str  # decoded URL path, starting with "/"
    query: str = ""
    headers: Mapping[str, str] | None = None

    def header(self, name: str) -> str | None:
        return (self.headers or {}).get(name)


class FileSource(Protocol):
    """Where one deployment's files come from: its manifest or its legacy prefix."""

    async def stat(self, rel: str) -> Blob:
        """``rel``'s metadata (empty body); ObjectNotFound if there is no such file."""
        ...

    async def read(self, rel: str, byte_range: tuple[int, int | None] | None) -> Blob:
        """``rel`` (or an inclusive range of it); ObjectNotFound, RangeNotSatisfiable."""
        ...


class PrefixFiles:
    """A deployment published before manifests: its files under ``sites/<id>/``."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.storage = storage
        self.prefix = prefix

    async def stat(self, rel: str) -> Blob:
        return await self.storage.head(self.prefix + rel)

    async def read(self, rel: str, byte_range: tuple[int, int | None] | None) -> Blob:
        return await self.storage.read(self.prefix + rel, byte_range=byte_range)


class ManifestFiles:
    """A deployment published as blobs: path -> blob from its manifest, so existence,
    size, type and ETag cost no S3 request; only the bytes are read."""

    def __init__(self, storage: Storage, loaded: Loaded) -> None:
        self.storage = storage
        self.files = loaded.manifest.files
        self.last_modified = loaded.last_modified

    def _ref(self, rel: str) -> FileRef:
        ref = self.files.get(rel)
        if ref is None:
            raise ObjectNotFound(rel)
        return ref

    def _meta(self, ref: FileRef, body: bytes = b"", **fields: Any) -> Blob:
        return Blob(
            body=body,
            content_type=ref.content_type,
            etag=f'"{ref.sha256}"',
            size=ref.size,
            last_modified=self.last_modified,
            **fields,
        )

    async def stat(self, rel: str) -> Blob:
        return self._meta(self._ref(rel))

    async def read(self, rel: str, byte_range: tuple[int, int | None] | None) -> Blob:
        ref = self._ref(rel)
        if byte_range is not None and byte_range[0] >= ref.size:
            raise RangeNotSatisfiable(rel)
        wanted = byte_range
        if ref.pack is not None:  # a range of the pack, the file's bytes only
            start, end = byte_range or (0, None)
            last = ref.size - 1 if end is None else min(end, ref.size - 1)
            wanted = (ref.offset + start, ref.offset + last)
        try:
            stored = await self.storage.read(blob_key(ref.blob), byte_range=wanted)
        except ObjectNotFound as exc:  # the manifest names it: a storage fault, not a 404
            log.warning("sites.blob_missing", path=rel, sha256=ref.sha256, blob=ref.blob)
            raise StorageError(f"blob of {rel!r} is missing") from exc
        except RangeNotSatisfiable as exc:
            if ref.pack is None:
                raise
            log.warning("sites.pack_short", path=rel, pack=ref.pack)
            raise StorageError(
                f"the pack holding {rel!r} is shorter than its manifest says"
            ) from exc
        if ref.pack is not None and wanted is not None and stored.length != _span(wanted):
            log.warning("sites.pack_short", path=rel, pack=ref.pack, length=stored.length)
            raise StorageError(f"the pack holding {rel!r} is shorter than its manifest says")
        return self._meta(
            ref,
            body=stored.body,
            partial=byte_range is not None,
            length=stored.length,
            rest=stored.rest,
        )


def _span(byte_range: tuple[int, int | None]) -> int:
    start, end = byte_range
    return -1 if end is None else end - start + 1


class SiteFiles:
    """One deployment's files, from ``source``, served as a static host would."""

    def __init__(self, source: FileSource, *, spa: bool = False) -> None:
        self.source = source
        self.spa = spa

    async def respond(self, request: Request) -> Response:
        """The response for ``request`` (see the module docstring)."""
        path = request.path or "/"
        rel = path.lstrip("/")
        try:
            if rel:
                check_name(rel.rstrip("/"))
        except ValidationError:
            return await self._not_found(request)
        if not rel or rel.endswith("/"):
            found = await self._directory(rel, request)
        else:
            found = await self._page(rel, request)
        return found or await self._not_found(request)

    async def _directory(self, rel: str, request: Request) -> Response | None:
        """``/dir/``: its index.html, or ``/dir`` when only ``dir.html`` exists."""
        found = await self._file(rel + "index.html", request)
        if found is None and rel and await self._exists(rel.rstrip("/") + ".html"):
            return self._redirect(request.path.rstrip("/"), request)
        return found

    async def _page(self, rel: str, request: Request) -> Response | None:
        """``/name``: the file, ``name.html``, or ``/name/`` when it is a directory."""
        found = await self._file(rel, request)
        if found is None and not rel.endswith(".html"):
            found = await self._file(rel + ".html", request)
        if found is None and await self._exists(rel + "/index.html"):
            return self._redirect(request.path + "/", request)
        return found

    async def _exists(self, rel: str) -> bool:
        try:
            await self.source.stat(rel)
        except ObjectNotFound:
            return False
        return True

    def _redirect(self, path: str, request: Request) -> Response:
        location = quote(path) + (f"?{request.query}" if request.query else "")
        return RedirectResponse(location, status_code=308, headers=dict(BASE_HEADERS))

    async def _not_found(self, request: Request) -> Response:
        last = request.path.rsplit("/", 1)[-1]
        if self.spa and "." not in last:
            page = await self._file("index.html", request, allow_range=False)
            if page is not None:
                return page
        page = await self._file("404.html", request, allow_range=False, status=404)
        if page is not None:
            return page
        headers = {**BASE_HEADERS, "Cache-Control": REVALIDATE}
        body = "" if request.method == "HEAD" else f"{request.path} not found\n"
        return PlainTextResponse(body, status_code=404, headers=headers)

    async def _file(
        self, rel: str, request: Request, *, allow_range: bool = True, status: int = 200
    ) -> Response | None:
        """``rel`` as a response, or None if there is no such file."""
        wanted = parse_range(request.header("range")) if allow_range and status == 200 else None
        conditional = request.header("if-none-match")
        try:
            if request.method == "HEAD" or (conditional and status == 200):
                blob = await self.source.stat(rel)
                if status == 200 and etag_matches(conditional, blob.etag):
                    return Response(status_code=304, headers=self._headers(rel, blob))
                if request.method == "HEAD":
                    headers = self._headers(rel, blob)
                    headers["Content-Length"] = str(blob.size)
                    return Response(status_code=status, headers=headers)
            blob = await self._read(rel, wanted)
        except ObjectNotFound:
            return None
        except RangeNotSatisfiable:
            blob = await self.source.stat(rel)
            headers = {**self._headers(rel, blob), "Content-Range": f"bytes */{blob.size}"}
            return Response(status_code=416, headers=headers)
        headers = self._headers(rel, blob)
        length = blob.length if blob.length >= 0 else len(blob.body)
        if blob.partial:
            end = blob.size - 1 if wanted is None else self._range_end(wanted, blob)
            start = end - length + 1
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
            status = 206
        if blob.rest is None:
            return Response(blob.body, status_code=status, headers=headers)
        headers["Content-Length"] = str(length)
        return StreamingResponse(_chain(blob.body, blob.rest), status_code=status, headers=headers)

    async def _read(self, rel: str, wanted: tuple[int, int | None] | None) -> Blob:
        if wanted is None:
            return await self.source.read(rel, None)
        start, end = wanted
        if start < 0:  # the last -start bytes: S3 takes "bytes=-N" itself, we need the size
            size = (await self.source.stat(rel)).size
            if size == 0:
                raise RangeNotSatisfiable("empty object")
            start, end = max(0, size + start), None
        return await self.source.read(rel, (start, end))

    @staticmethod
    def _range_end(wanted: tuple[int, int | None], blob: Blob) -> int:
        start, end = wanted
        if start < 0 or end is None:
            return blob.size - 1
        return min(end, blob.size - 1)

    @staticmethod
    def _headers(rel: str, blob: Blob) -> dict[str, str]:
        headers = dict(BASE_HEADERS)
        headers["Content-Type"] = blob.content_type
        headers["Cache-Control"] = IMMUTABLE if is_hashed(rel) else REVALIDATE
        if blob.etag:
            headers["ETag"] = blob.etag
        if blob.last_modified:
            headers["Last-Modified"] = blob.last_modified
        return headers
