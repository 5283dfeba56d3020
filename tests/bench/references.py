"""The reference transfers, on the same moto server as buildq: the seed's one PUT and
one GET per file (sequential boto3), and the AWS CLI's ``s3 cp --recursive`` and
``s3 sync``. The AWS CLI lives in its own virtualenv (``.bench/awscli``) because it
pins botocore, which must not change the project's environment."""

from __future__ import annotations

import contextlib
import mimetypes
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.bench.trees import Tree

REPO_ROOT = Path(__file__).resolve().parents[2]
AWSCLI_VENV = REPO_ROOT / ".bench" / "awscli"
AWS = AWSCLI_VENV / "bin" / "aws"
BUCKET = "bench-reference"
AWS_TIMEOUT_S = 600


def ensure_awscli(say: Callable[[str], None] = print) -> Path:
    """The AWS CLI in ``.bench/awscli``, installed from PyPI with pip on first use."""
    if AWS.is_file():
        return AWS
    say(f"installing the AWS CLI into {AWSCLI_VENV} (pip, once; it pins its own botocore)")
    subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
    subprocess.run(
        [str(AWSCLI_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "awscli"],
        check=True, timeout=900,
    )  # fmt: skip
    if not AWS.is_file():
        raise RuntimeError(f"pip installed awscli, but {AWS} is not there")
    return AWS


def awscli_version() -> str:
    done = subprocess.run([str(AWS), "--version"], capture_output=True, text=True, check=True)
    return (done.stdout or done.stderr).split()[0]


class References:
    """Times each reference strategy against ``endpoint`` (a moto server's URL)."""

    def __init__(self, endpoint: str, credentials: dict[str, str], scratch: Path) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.scratch = scratch
        self.s3: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=credentials["AWS_DEFAULT_REGION"],
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )
        with contextlib.suppress(self.s3.exceptions.BucketAlreadyOwnedByYou):
            self.s3.create_bucket(Bucket=BUCKET)
        self.runs = 0

    def _prefix(self, what: str) -> str:
        self.runs += 1
        return f"{what}-{os.getpid()}-{self.runs}"

    def put_per_file(self, tree: Tree) -> tuple[float, str]:
        """The seed's upload: one sequential ``put_object`` per file; (seconds, prefix)."""
        prefix = self._prefix("seed")
        paths = tree.paths()
        started = time.perf_counter()
        for path in paths:
            rel = path.relative_to(tree.repo).as_posix()
            mime = mimetypes.guess_type(rel)[0] or "application/octet-stream"
            self.s3.put_object(
                Bucket=BUCKET, Key=f"{prefix}/{rel}", Body=path.read_bytes(), ContentType=mime
            )
        return time.perf_counter() - started, prefix

    def get_per_file(self, tree: Tree, prefix: str) -> float:
        """The seed's download: one sequential ``get_object`` per file, written to disk."""
        rels = [p.relative_to(tree.repo).as_posix() for p in tree.paths()]
        with tempfile.TemporaryDirectory(dir=self.scratch) as into:
            target = Path(into)
            started = time.perf_counter()
            for rel in rels:
                body = self.s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{rel}")["Body"].read()
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
            return time.perf_counter() - started

    def _aws(self, *args: str) -> float:
        home = self.scratch / "aws-home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "AWS_CONFIG_FILE": str(home / "config"),  # absent: the CLI's defaults
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            **self.credentials,
        }
        argv = [str(AWS), "s3", *args, "--endpoint-url", self.endpoint, "--only-show-errors"]
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=AWS_TIMEOUT_S)
        return time.perf_counter() - started

    def aws_cp_then_sync(self, tree: Tree) -> tuple[float, float]:
        """``aws s3 cp --recursive`` of the tree, then ``aws s3 sync`` of the same,
        unchanged tree to the same place (its second run); seconds of each."""
        dest = f"s3://{BUCKET}/{self._prefix('awscli')}/"
        source = str(tree.repo)
        copied = self._aws("cp", "--recursive", source, dest, "--exclude", ".git/*")
        synced = self._aws("sync", source, dest, "--exclude", ".git/*")
        return copied, synced
