"""A large published file is streamed from S3 to the visitor, never held whole in
the uploader: its memory stays flat while a 200 MB file goes out."""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

import httpx
import psutil
import pytest
import redis

from shared.redis.keys import Keys
from tests.integration.helpers import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 200 * 1024 * 1024
JOB_ID = "b1" * 10


def test_a_200_mb_file_is_served_with_flat_uploader_memory(stack: Stack, s3_client: Any) -> None:
    block = hashlib.sha256(b"buildq").digest() * (1024 * 1024 // 32)  # 1 MiB, not zeros
    s3_client.upload_fileobj(
        io.BytesIO(block * (SIZE // len(block))),
        stack.env["BUILDQ_S3_BUCKET"],
        f"sites/{JOB_ID}/big.bin",
    )
    client = redis.Redis.from_url(stack.env["BUILDQ_REDIS_URL"], decode_responses=True)
    client.hset(Keys(stack.env["BUILDQ_NAMESPACE"]).site("big"), mapping={"id": JOB_ID})
    uploader = psutil.Process(stack.procs[0].pid)
    assert stack.site("big", "").status_code == 404  # warm up: clients, thread pool
    before = uploader.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, uploader.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received = 0
    url = f"http://127.0.0.1:{stack.sites_port}/big.bin"
    try:
        with httpx.stream(
            "GET", url, headers={"Host": f"big.localhost:{stack.sites_port}"}, timeout=120
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(SIZE)
            for chunk in response.iter_bytes():
                received += len(chunk)
    finally:
        done.set()
        sampler.join()

    assert received == SIZE
    growth_mib = (peak - before) / (1024 * 1024)
    assert growth_mib < 64, f"uploader RSS grew by {growth_mib:.0f} MiB serving 200 MB"
