"""Upload a build's output to ``sites/<id>/`` with bounded concurrency.

Files are listed by :func:`shared.storage.archive.walk_tree`, then each is opened beneath
a directory fd with ``O_NOFOLLOW`` and checked (:func:`shared.storage.archive.open_entry`)
before it is read: a file swapped for a symlink after the listing is refused,
never followed to a host file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from shared.storage.archive import Entry, open_entry, open_root, walk_tree
from shared.storage.s3 import Storage, content_type


async def publish_dir(
    storage: Storage,
    root: Path,
    prefix: str,
    *,
    max_files: int,
    max_bytes: int,
    concurrency: int,
    on_skip: Callable[[str, str], None] | None = None,
) -> tuple[int, int]:
    """Upload every regular file under ``root`` to ``prefix``; returns (files, bytes)."""
    root_fd = await anyio.to_thread.run_sync(open_root, root)
    try:
        entries: list[Entry] = await anyio.to_thread.run_sync(
            lambda: list(walk_tree(root, max_files=max_files, max_bytes=max_bytes, on_skip=on_skip))
        )
        pending = iter(entries)

        async def uploader() -> None:
            for entry in pending:
                fd = await anyio.to_thread.run_sync(open_entry, root_fd, entry)
                with os.fdopen(fd, "rb") as fh:
                    await storage.put_fileobj(prefix + entry.rel, fh, mime=content_type(entry.rel))

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(concurrency, len(entries)) or 1):
                    tg.start_soon(uploader)
        except ExceptionGroup as group:
            # Parallel uploads fail together in an outage: report the first failure.
            raise group.exceptions[0] from None
    finally:
        os.close(root_fd)
    return len(entries), sum(e.size for e in entries)
