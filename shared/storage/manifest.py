"""Per-deployment manifests: which content-addressed blob serves each published path.

A deployment's files are stored once per content, at ``blobs/<sha256>``; the
deployment itself is ``manifests/<id>.json``, written after every blob it names
is stored (its existence means the deployment is complete). Format, version 1::

    {"version": 1, "service": "web", "seq": 7, "parent": "<id>" | null, "spa": false,
     "files": {"index.html": {"sha256": "<64 hex>", "size": 11,
                              "type": "text/html; charset=utf-8"}}}

Version 2 adds packs: many small files stored in one blob, back to back, each
read with a Range request. A packed entry names its pack and where its bytes start::

    "app.js": {"sha256": "<64 hex>", "size": 14, "type": "...",
               "pack": "<64 hex: the pack blob's hash>", "offset": 11}

A manifest without packed entries is written as version 1, so it reads the same
everywhere; version 2 is written only when it needs to be, and a reader that only
knows version 1 refuses it instead of serving files from blobs that do not exist.

``parent`` is the deployment that was live when this one was published: the
publisher trusted the blobs of ``parent`` (and of its parent, REUSE_DEPTH manifests
in all) to exist, so garbage collection keeps that chain of every live deployment
(:mod:`shared.storage.gc`). Manifests are immutable, which is why a bounded
in-process cache (:class:`ManifestCache`) is enough on both sides.

Everything read back is checked (:meth:`Manifest.decode`): a path that is not a
plain relative name, a hash that is not 64 lowercase hex digits, a Content-Type
that could smuggle a header, and so on, refuse the whole manifest.
"""

from __future__ import annotations

import json
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.errors import ValidationError
from shared.core.names import NAME_RE
from shared.storage.archive import check_name
from shared.storage.s3 import ObjectNotFound, Storage

MANIFEST_VERSION = 1  # no packed entries
PACKED_VERSION = 2  # some entries are ranges of a pack
REUSE_DEPTH = 3  # the live manifest and two ancestors: what a publish trusts to exist
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_FILES = 1_000_000
BLOB_PREFIX = "blobs/"
MANIFEST_PREFIX = "manifests/"

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
DEPLOYMENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# type/subtype with optional parameters; nothing that could end a header line.
MIME_PART = r"[A-Za-z0-9!#$&^_.+-]+"
CONTENT_TYPE_RE = re.compile(rf"^{MIME_PART}/{MIME_PART}(; ?{MIME_PART}={MIME_PART})*$")
MAX_CONTENT_TYPE = 200


class ManifestError(ValidationError):
    """A manifest is malformed, of an unknown version, or names something unsafe."""


def blob_key(sha256: str) -> str:
    """Where the blob with this content hash lives."""
    return BLOB_PREFIX + sha256


def blob_hash(key: str) -> str | None:
    """The content hash a ``blobs/…`` key names, or None if it is not a blob key."""
    name = key.removeprefix(BLOB_PREFIX)
    return name if name != key and HASH_RE.fullmatch(name) else None


def manifest_key(job_id: str) -> str:
    """Where a deployment's manifest lives."""
    return f"{MANIFEST_PREFIX}{job_id}.json"


def manifest_id(key: str) -> str | None:
    """The deployment id a ``manifests/…`` key names, or None."""
    name = key.removeprefix(MANIFEST_PREFIX)
    if name == key or not name.endswith(".json"):
        return None
    job_id = name.removesuffix(".json")
    return job_id if DEPLOYMENT_ID_RE.fullmatch(job_id) else None


@dataclass(frozen=True, slots=True)
class Stored:
    """Where a content's bytes are: its own blob (``pack`` None), or ``offset``
    bytes into the pack blob ``pack``."""

    pack: str | None = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class FileRef:
    """One published path: its content hash, its size, the Content-Type to serve it
    with, and where its bytes are stored (its own blob unless ``pack`` is set)."""

    sha256: str
    size: int
    content_type: str
    pack: str | None = None
    offset: int = 0

    @property
    def blob(self) -> str:
        """The hash of the blob holding the bytes: the content's own, or its pack's."""
        return self.pack or self.sha256

    @property
    def stored(self) -> Stored:
        return Stored(self.pack, self.offset)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What one deployment serves."""

    service: str
    seq: int
    parent: str | None
    spa: bool
    files: Mapping[str, FileRef]

    def hashes(self) -> set[str]:
        """The content hashes of every file."""
        return {ref.sha256 for ref in self.files.values()}

    def blobs(self) -> set[str]:
        """The hashes of every blob this deployment reads (packs included): what
        garbage collection must keep for it."""
        return {ref.blob for ref in self.files.values()}

    def stored(self) -> dict[str, Stored]:
        """Where each content of this deployment is stored, by content hash: what a
        later publish may reuse instead of uploading."""
        return {ref.sha256: ref.stored for ref in self.files.values()}

    def encode(self) -> bytes:
        """Compact, key-sorted JSON: a re-run of the same publish writes the same bytes."""
        packed = any(ref.pack is not None for ref in self.files.values())
        document = {
            "version": PACKED_VERSION if packed else MANIFEST_VERSION,
            "service": self.service,
            "seq": self.seq,
            "parent": self.parent,
            "spa": self.spa,
            "files": {rel: _entry(ref) for rel, ref in self.files.items()},
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """A manifest from its JSON, or ManifestError naming what is wrong."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ManifestError("manifest is not a JSON object")
        version = document.get("version")
        if type(version) is not int or version not in (MANIFEST_VERSION, PACKED_VERSION):
            raise ManifestError(
                f"manifest version {version!r} is not {MANIFEST_VERSION} or {PACKED_VERSION}"
            )
        service, seq, parent = document.get("service"), document.get("seq"), document.get("parent")
        if not isinstance(service, str) or not NAME_RE.fullmatch(service):
            raise ManifestError(f"manifest service {service!r} is not a service name")
        if type(seq) is not int or seq < 0:
            raise ManifestError(f"manifest seq {seq!r} is not a non-negative integer")
        if parent is not None and not (
            isinstance(parent, str) and DEPLOYMENT_ID_RE.fullmatch(parent)
        ):
            raise ManifestError(f"manifest parent {parent!r} is not a deployment id")
        spa = document.get("spa")
        if not isinstance(spa, bool):
            raise ManifestError("manifest spa is not a boolean")
        files = document.get("files")
        if not isinstance(files, dict) or len(files) > MAX_MANIFEST_FILES:
            raise ManifestError("manifest files is not an object of at most 1,000,000 paths")
        packs = version == PACKED_VERSION
        return cls(
            service, seq, parent, spa, {rel: _file_ref(rel, v, packs) for rel, v in files.items()}
        )


def _entry(ref: FileRef) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": ref.sha256, "size": ref.size, "type": ref.content_type}
    if ref.pack is not None:
        entry["pack"] = ref.pack
        entry["offset"] = ref.offset
    return entry


def _file_ref(rel: str, value: Any, packs: bool) -> FileRef:
    try:
        check_name(rel)
    except ValidationError as exc:
        raise ManifestError(f"manifest path refused: {exc}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"manifest entry of {rel!r} is not an object")
    sha256, size, kind = value.get("sha256"), value.get("size"), value.get("type")
    if not isinstance(sha256, str) or not HASH_RE.fullmatch(sha256):
        raise ManifestError(f"manifest hash of {rel!r} is not 64 lowercase hex digits")
    if type(size) is not int or size < 0:
        raise ManifestError(f"manifest size of {rel!r} is not a non-negative integer")
    if (
        not isinstance(kind, str)
        or len(kind) > MAX_CONTENT_TYPE
        or not CONTENT_TYPE_RE.fullmatch(kind)
    ):
        raise ManifestError(f"manifest Content-Type of {rel!r} is not a media type")
    pack, offset = value.get("pack"), value.get("offset", 0)
    if pack is not None or "offset" in value:
        if not packs:
            raise ManifestError(f"manifest entry of {rel!r} is packed in a version 1 manifest")
        if not isinstance(pack, str) or not HASH_RE.fullmatch(pack):
            raise ManifestError(f"manifest pack of {rel!r} is not 64 lowercase hex digits")
        if type(offset) is not int or offset < 0:
            raise ManifestError(f"manifest offset of {rel!r} is not a non-negative integer")
        if size == 0:
            raise ManifestError(f"manifest entry of {rel!r} is empty and packed")
        pack = sys.intern(pack)
    # One string object per hash and type, however many manifests share them.
    return FileRef(sys.intern(sha256), size, sys.intern(kind), pack, offset)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A manifest as read from the bucket, with the HTTP date it was stored."""

    manifest: Manifest
    last_modified: str


class ManifestCache:
    """Manifests by deployment id, least recently used first out.

    Bounded by the number of file entries held (a manifest of 100,000 files weighs
    what 100 small ones do) and, with ``max_entries``, by the number of manifests (a
    deployer publishing many one-file sites would otherwise keep 50,000 manifests of
    ~0.8 KiB each); the most recent manifest is kept even if it alone is over the
    bound. Absent manifests are not cached: they may be published later.
    """

    def __init__(
        self, storage: Storage, *, max_files: int = 50_000, max_entries: int | None = None
    ) -> None:
        self.storage = storage
        self.max_files = max_files
        self.max_entries = max_entries
        self.entries: OrderedDict[str, Loaded] = OrderedDict()
        self.files = 0

    async def get(self, job_id: str) -> Loaded | None:
        """The manifest of ``job_id``; None if it has none; ManifestError if it is bad."""
        found = self.entries.get(job_id)
        if found is not None:
            self.entries.move_to_end(job_id)
            return found
        try:
            stored = await self.storage.read(manifest_key(job_id))
        except ObjectNotFound:
            return None
        data = stored.body
        if stored.rest is not None:  # larger than one inline read: the rest streams
            if stored.size > MAX_MANIFEST_BYTES:
                await stored.rest.aclose()  # type: ignore[attr-defined]
                raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            data += b"".join([chunk async for chunk in stored.rest])
        loaded = Loaded(Manifest.decode(data), stored.last_modified)
        self.put(job_id, loaded)
        return loaded

    def put(self, job_id: str, loaded: Loaded) -> None:
        """Remember ``loaded`` (a manifest just written or read) under ``job_id``."""
        old = self.entries.pop(job_id, None)
        if old is not None:
            self.files -= len(old.manifest.files)
        self.entries[job_id] = loaded
        self.files += len(loaded.manifest.files)
        while len(self.entries) > 1 and (
            self.files > self.max_files
            or (self.max_entries is not None and len(self.entries) > self.max_entries)
        ):
            _, evicted = self.entries.popitem(last=False)
            self.files -= len(evicted.manifest.files)

    async def chain(self, job_id: str | None, depth: int = REUSE_DEPTH) -> list[Manifest]:
        """``job_id``'s manifest and its ancestors, ``depth`` at most; the chain stops
        at a deployment without one (published before manifests, or collected)."""
        found: list[Manifest] = []
        seen: set[str] = set()
        while job_id is not None and len(found) < depth and job_id not in seen:
            seen.add(job_id)
            loaded = await self.get(job_id)
            if loaded is None:
                break
            found.append(loaded.manifest)
            job_id = loaded.manifest.parent
        return found
