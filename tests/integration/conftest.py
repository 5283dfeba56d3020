"""Real infrastructure for integration tests: one valkey-server and one moto S3
server per session (started here, stopped by PID), a fresh namespace and bucket
per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.fernet import Fernet

from shared.cli.embedded import EMBEDDED_AWS_ENV, free_port, start_moto, start_valkey, stop_process
from shared.core.settings import Settings, load_settings
from tests.integration.helpers import Stack, make_env, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    data = tmp_path_factory.mktemp("valkey")
    with (data / "valkey.log").open("ab") as log:
        proc = start_valkey(data, port, appendonly=False, log=log)
        yield f"redis://127.0.0.1:{port}/0"
        stop_process(proc)


@pytest.fixture(scope="session")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for key, value in EMBEDDED_AWS_ENV.items():
        os.environ.setdefault(key, value)
    port = free_port()
    with (tmp_path_factory.mktemp("moto") / "moto.log").open("ab") as log:
        proc = start_moto(port, log=log)
        yield f"http://127.0.0.1:{port}"
        stop_process(proc)


@pytest.fixture
def bq_env(valkey_url: str, s3_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for buildq processes: a fresh namespace and bucket."""
    return make_env(valkey_url, s3_url, tmp_path)


@pytest.fixture
def bq_settings(bq_env: dict[str, str]) -> Settings:
    return load_settings(bq_env)


@pytest.fixture
def s3_client(s3_url: str, bq_settings: Settings):  # type: ignore[no-untyped-def]
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    client.create_bucket(Bucket=bq_settings.s3_bucket)
    return client


@pytest.fixture
def stack(bq_env: dict[str, str], tmp_path: Path, s3_client: object) -> Iterator[Stack]:
    """An uploader and one deployer (2 slots) as real processes."""
    with running_stack(bq_env, tmp_path) as running:
        yield running


@pytest.fixture
def secret_stack(valkey_url: str, s3_url: str, tmp_path: Path, s3_client: Any) -> Iterator[Stack]:
    """A stack (one deployer, one slot) that can keep secrets: a fresh
    ``BUILDQ_SECRETS_KEY``."""
    env = make_env(valkey_url, s3_url, tmp_path, BUILDQ_SECRETS_KEY=Fernet.generate_key().decode())
    s3_client.create_bucket(Bucket=env["BUILDQ_S3_BUCKET"])
    with running_stack(env, tmp_path, slots=1) as running:
        yield running


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
