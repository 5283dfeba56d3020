"""Which storage backend a process uses, chosen once from the settings."""

from __future__ import annotations

from functools import partial

from shared.core.settings import Settings
from shared.storage.localdir import LocalStorage
from shared.storage.objects import Storage
from shared.storage.s3 import S3Storage, make_s3_client


def open_storage(settings: Settings) -> Storage:
    """The bucket every process of this deployment shares: a directory on this host
    with ``BUILDQ_STORAGE_DIR``, otherwise S3 (``BUILDQ_S3_ENDPOINT_URL`` or AWS).
    Nothing is touched until the first call."""
    if settings.storage_dir is not None:
        return LocalStorage(
            settings.storage_dir, settings.s3_bucket, concurrency=settings.upload_concurrency
        )
    return S3Storage(
        None,
        settings.s3_bucket,
        concurrency=settings.upload_concurrency,
        connect=partial(make_s3_client, settings),
    )
