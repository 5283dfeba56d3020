"""A job's source: one GET of its archive, extracted as the bytes arrive.

No temporary archive file and no HEAD first (``download_file`` sends one and starts a
transfer manager with its own threads for every object): the extractor reads the
response in a worker thread, and each streamed chunk past the first MiB is fetched
on the event loop through :class:`shared.storage.s3.Storage`'s limiter.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.to_thread

from shared.storage.archive import extract_stream
from shared.storage.digests import Digests
from shared.storage.s3 import Blob, ObjectNotFound, Storage, source_key

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    """The next chunk, b"" at the end."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return b""


class BlobReader(io.RawIOBase):
    """A downloaded object as a blocking stream for a worker thread: the inline body,
    then each chunk of the rest, pulled from the event loop as it is read."""

    def __init__(self, blob: Blob) -> None:
        super().__init__()
        self._pending = memoryview(blob.body)
        self._rest = blob.rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            if self._rest is None:
                return 0
            chunk = anyio.from_thread.run(_next_chunk, self._rest)
            if not chunk:
                self._rest = None
                return 0
            self._pending = memoryview(chunk)
        view = memoryview(buffer).cast("B")
        taken = min(len(view), len(self._pending))
        view[:taken] = self._pending[:taken]
        self._pending = self._pending[taken:]
        return taken


async def fetch_source(
    storage: Storage,
    job_id: str,
    dest: Path,
    *,
    max_files: int,
    max_bytes: int,
    digests: Digests | None = None,
) -> int:
    """Download and extract the job's source archive into ``dest``; returns the file
    count. The zstd archive, or the tar.gz of a job ingested before sources were zstd
    (when the zstd one is absent). Each file's digest goes into ``digests`` (sealed)
    when given. Extraction errors as :func:`extract_stream`; S3 faults propagate
    (StorageError) for the consumer to retry."""
    try:
        blob = await storage.read(source_key(job_id))
    except ObjectNotFound:
        blob = await storage.read(source_key(job_id, legacy=True))
    stream = io.BufferedReader(BlobReader(blob), buffer_size=1 << 20)
    try:
        return await anyio.to_thread.run_sync(
            lambda: extract_stream(
                stream, dest, max_files=max_files, max_bytes=max_bytes, digests=digests
            )
        )
    finally:
        if isinstance(blob.rest, AsyncGenerator):  # closes the response, also on failure
            with anyio.CancelScope(shield=True):
                await blob.rest.aclose()
