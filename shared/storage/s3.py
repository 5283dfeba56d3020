"""S3 storage: boto3 calls in worker threads behind a limiter; errors translated here.

boto3 and botocore are imported only where a client is made or its errors are
translated: with the client they cost a process ~25 MiB (botocore's parsed JSON data)
that a deployer which has not run a job yet never needs (see :class:`S3Storage`)."""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import anyio
import anyio.to_thread

from shared.core.errors import StorageError
from shared.core.settings import Settings
from shared.storage.objects import (
    INLINE_BYTES,
    STREAM_CHUNK_BYTES,
    Blob,
    InvalidKeyError,
    ObjectNotFound,
    RangeNotSatisfiable,
    Storage,
    StoredObject,
    check_key,
    check_prefix,
    content_type,
    encode_json,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import DeleteObjectsOutputTypeDef, ObjectIdentifierTypeDef

# The interface's names, for the modules that import them from here.
__all__ = [
    "INLINE_BYTES",
    "Blob",
    "InvalidKeyError",
    "ObjectNotFound",
    "RangeNotSatisfiable",
    "S3Storage",
    "Storage",
    "StoredObject",
    "content_type",
    "make_s3_client",
]

T = TypeVar("T")
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
EXPECT_MIN_BYTES = 1024 * 1024  # smaller PutObject bodies go without Expect: 100-continue

NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


def make_s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client for the configured endpoint (credentials from AWS_*)."""
    import boto3  # here, not at the top: see the module docstring
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max(10, settings.upload_concurrency + 4),
        s3={"addressing_style": "path"},
    )
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=config,
    )
    client.meta.events.register("before-sign.s3.PutObject", drop_expect_for_small_bodies)
    return client


def drop_expect_for_small_bodies(request: Any, **_: Any) -> None:
    """No ``Expect: 100-continue`` on a PutObject of at most EXPECT_MIN_BYTES.

    botocore asks for it on every PutObject (it turns even ``bytes`` into a file):
    one more round trip before the body for each small file, where the check it
    buys (refused before sending) saves nothing."""
    from botocore.utils import determine_content_length  # loaded with the client

    decoded = request.headers.get("X-Amz-Decoded-Content-Length")  # aws-chunked (HTTPS)
    length = int(decoded) if decoded else determine_content_length(request.body)
    if length is not None and length <= EXPECT_MIN_BYTES and "Expect" in request.headers:
        del request.headers["Expect"]


class S3Storage:
    """A bucket in S3 (:class:`Storage`); at most ``concurrency`` calls run at once.

    Given ``connect`` instead of a client, the client is made on first use, in the
    worker thread of that call (never on the event loop): every call reads
    :attr:`client` inside its worker thread."""

    def __init__(
        self,
        client: S3Client | None,
        bucket: str,
        *,
        concurrency: int = 16,
        connect: Callable[[], S3Client] | None = None,
    ) -> None:
        if client is None and connect is None:
            raise ValueError("S3Storage needs a client or a way to connect one")
        self._client = client
        self._connect = connect
        self._connecting = threading.Lock()
        self.bucket = bucket
        self.limiter = anyio.CapacityLimiter(concurrency)

    @property
    def client(self) -> S3Client:
        """The boto3 client, made by ``connect`` on first use (blocking: call it only
        from a worker thread until then)."""
        client = self._client
        if client is None:
            with self._connecting:
                if self._client is None:
                    assert self._connect is not None  # __init__ requires one of the two
                    self._client = self._connect()
                client = self._client
        return client

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(_translate, fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.limiter)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        try:
            await self._run(lambda: self.client.head_bucket(Bucket=self.bucket))
        except ObjectNotFound:
            await self._run(lambda: self.client.create_bucket(Bucket=self.bucket))

    async def check(self) -> None:
        """Raise StorageError unless the bucket is reachable."""
        await self._run(lambda: self.client.head_bucket(Bucket=self.bucket))

    async def put_file(self, key: str, path: Path, *, mime: str | None = None) -> None:
        """Store the file at ``path`` (multipart when large: boto3's transfer manager)."""
        check_key(key)
        extra = {"ContentType": mime or content_type(key)}
        await self._run(
            lambda: self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)
        )

    async def put_fileobj(self, key: str, fileobj: BinaryIO, *, mime: str | None = None) -> None:
        """Upload an already open binary file (read in a worker thread)."""
        check_key(key)
        extra = {"ContentType": mime or content_type(key)}
        await self._run(
            lambda: self.client.upload_fileobj(fileobj, self.bucket, key, ExtraArgs=extra)
        )

    async def put_bytes(self, key: str, data: bytes, *, mime: str) -> None:
        check_key(key)
        await self._run(
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime)
        )

    async def put_json(self, key: str, value: Any) -> None:
        await self.put_bytes(key, encode_json(value), mime="application/json")

    async def get_to_file(self, key: str, path: Path) -> None:
        check_key(key)
        await self._run(lambda: self.client.download_file(self.bucket, key, str(path)))

    async def get(self, key: str) -> tuple[bytes, str]:
        """The whole object and its Content-Type."""
        check_key(key)

        def read() -> tuple[bytes, str]:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            return obj["Body"].read(), obj.get("ContentType", "application/octet-stream")

        return await self._run(read)

    async def read(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> Blob:
        """The object (or ``byte_range``, inclusive, end None: to the end) with its
        metadata; ObjectNotFound if missing, RangeNotSatisfiable past its end.

        At most INLINE_BYTES are read at once; a larger answer streams the rest
        (``Blob.rest``), so serving a big file costs constant memory."""
        check_key(key)

        def open_object() -> tuple[Blob, Any]:
            if byte_range is None:
                obj = self.client.get_object(Bucket=self.bucket, Key=key)
            else:
                start, end = byte_range
                wanted = f"bytes={start}-{'' if end is None else end}"
                obj = self.client.get_object(Bucket=self.bucket, Key=key, Range=wanted)
            stream: Any = obj["Body"]
            length = int(obj.get("ContentLength", 0))
            head = stream.read(INLINE_BYTES)
            total = length
            content_range = obj.get("ContentRange")
            if content_range and "/" in content_range:
                total = int(content_range.rsplit("/", 1)[1])
            if len(head) >= length:
                stream.close()
                stream = None
            meta = Blob(
                body=head,
                content_type=obj.get("ContentType", "application/octet-stream"),
                etag=obj.get("ETag", ""),
                last_modified=_http_date(obj.get("LastModified")),
                size=total,
                partial=byte_range is not None,
                length=length,
            )
            return meta, stream

        blob, stream = await self._run(open_object)
        if stream is None:
            return blob
        return dataclasses.replace(blob, rest=self._chunks(stream))

    async def _chunks(self, stream: Any) -> AsyncIterator[bytes]:
        """The rest of a streaming body, STREAM_CHUNK_BYTES at a time; closed at the end."""
        try:
            while chunk := await self._run(stream.read, STREAM_CHUNK_BYTES):
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)

    async def head(self, key: str) -> Blob:
        """The object's metadata only (``body`` is empty)."""
        check_key(key)
        head = await self._run(lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        return Blob(
            body=b"",
            content_type=head.get("ContentType", "application/octet-stream"),
            etag=head.get("ETag", ""),
            last_modified=_http_date(head.get("LastModified")),
            size=head.get("ContentLength", 0),
        )

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            await self._run(lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ObjectNotFound:
            return False
        return True

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix``, all pages or StorageError: a listing that
        fails part-way (or comes back truncated without a way on) raises, so no
        caller ever acts on a partial one."""
        check_prefix(prefix)

        def listing() -> list[StoredObject]:
            found: list[StoredObject] = []
            token: str | None = None
            while True:
                args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
                if token is not None:
                    args["ContinuationToken"] = token
                page = self.client.list_objects_v2(**args)
                found.extend(
                    StoredObject(o["Key"], int(o.get("Size", 0)), o["LastModified"])
                    for o in page.get("Contents", [])
                )
                if not page.get("IsTruncated"):
                    return found
                token = page.get("NextContinuationToken")
                if not token:
                    raise StorageError(f"S3 listing of {prefix!r} was cut short")

        return await self._run(listing)

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete ``keys`` (in batches of DELETE_BATCH); StorageError if S3 refuses any."""
        for key in keys:
            check_key(key)
        for start in range(0, len(keys), DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[start : start + DELETE_BATCH]
            ]
            answer = await self._run(self._delete_batch, batch)
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 refused to delete {len(errors)} object(s), "
                    f"e.g. {first.get('Key')!r}: {first.get('Code')}"
                )

    def _delete_batch(self, batch: list[ObjectIdentifierTypeDef]) -> DeleteObjectsOutputTypeDef:
        """One DeleteObjects call, in a worker thread."""
        return self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
        )


def _http_date(when: Any) -> str:
    """An S3 ``LastModified`` datetime as an HTTP date ("" if absent)."""
    if not isinstance(when, datetime):
        return ""
    return email.utils.format_datetime(when.astimezone(UTC), usegmt=True)


def _translate(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    from botocore.exceptions import BotoCoreError, ClientError  # see the module docstring

    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in NOT_FOUND_CODES:
            raise ObjectNotFound(code) from exc
        if code == "InvalidRange":
            raise RangeNotSatisfiable(code) from exc
        raise StorageError(f"S3 refused the request: {code or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 unreachable: {exc}") from exc


def source_key(job_id: str, *, legacy: bool = False) -> str:
    """Where a deployment's source archive lives (``legacy``: the ``.tar.gz`` of a job
    ingested before sources were zstd-compressed)."""
    return f"sources/{job_id}.tar.gz" if legacy else f"sources/{job_id}.tar.zst"


def site_prefix(job_id: str) -> str:
    """The prefix under which a deployment's published files live."""
    return f"sites/{job_id}/"


def record_key(job_id: str) -> str:
    """The durable copy of a finished job's record."""
    return f"deployments/{job_id}.json"


def serve_key(job_id: str) -> str:
    """How a deployment is served (``{"spa": bool}``), beside its files."""
    return f"serve/{job_id}.json"


def alias_key(service: str) -> str:
    """The durable copy of a service's live alias."""
    return f"aliases/{service}.json"
