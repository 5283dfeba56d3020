"""One error family: every error buildq raises on purpose is a BuildqError, and
whether it is retried is decided by its class where it is raised."""

from __future__ import annotations

import errno
import importlib
import inspect
import socket
import tarfile
from pathlib import Path

import pytest

from shared.core.errors import (
    BuildError,
    BuildqError,
    CapacityError,
    DiskError,
    PermanentError,
    TransientError,
    ValidationError,
)

ROOT = Path(__file__).resolve().parents[2]
# Control flow, not failures: each is caught next to where it is raised.
NOT_FAILURES = {
    "uploader.refused.Refused": "an HTTP answer with its status and headers",
    "uploader.chatops_commands.Refusal": "a chat reply to the caller",
    "uploader.ownership.ReleaseRefused": "an HTTP status / chat reply for a release",
    "uploader.loghub.HubFull": "answered 503 by the log route",
    "uploader.forges.UnsupportedEvent": "a webhook delivery answered 202 with the reason",
}


def _modules() -> list[str]:
    names = []
    for package in ("shared", "uploader", "deployer"):
        for path in (ROOT / package).rglob("*.py"):
            if "demo" in path.parts or path.name in ("__main__.py", "_launch.py"):
                continue  # _launch.py is the stdlib-only build launcher
            rel = path.relative_to(ROOT).with_suffix("")
            names.append(".".join(p for p in rel.parts if p != "__init__"))
    return names


def test_every_exception_buildq_defines_is_in_the_family() -> None:
    outside = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not issubclass(value, BuildqError)
                and f"{name}.{attr}" not in NOT_FAILURES
            ):
                outside.append(f"{name}.{attr}")
    assert not outside, f"errors outside BuildqError: {outside}"


def test_every_family_member_is_either_transient_or_permanent() -> None:
    for name in _modules():
        for value in vars(importlib.import_module(name)).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BuildqError)
                and value is not BuildqError
            ):
                assert issubclass(value, TransientError | PermanentError), value


def test_builds_that_fail_on_their_own_are_permanent() -> None:
    from deployer.build import BuildOutOfMemory, BuildTimeout

    assert issubclass(BuildTimeout, BuildError)
    assert issubclass(BuildOutOfMemory, BuildError)
    assert issubclass(BuildError, PermanentError)


def test_a_full_disk_while_extracting_is_retried_not_blamed_on_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.storage.archive import extract

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "a.txt", arcname="a.txt")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("shared.storage.archive.write_file", full)
    with pytest.raises(DiskError, match="No space left"):
        extract(archive, tmp_path / "out", max_files=10, max_bytes=1000)


def test_a_corrupt_archive_is_still_refused(tmp_path: Path) -> None:
    from shared.storage.archive import extract

    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValidationError, match="corrupt"):
        extract(archive, tmp_path / "out", max_files=10, max_bytes=1000)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(socket.EAI_AGAIN, TransientError), (socket.EAI_NONAME, ValidationError)],
)
def test_a_resolver_failure_is_retried_but_no_such_host_is_refused(
    monkeypatch: pytest.MonkeyPatch, code: int, expected: type[Exception]
) -> None:
    from uploader import netcheck

    def fail(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(code, "resolver says no")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(expected):
        netcheck.system_resolver("git.example.com", 443)


def test_an_exhausted_uid_pool_is_a_capacity_fault(tmp_path: Path) -> None:
    from deployer.sandbox import UidPool

    pool = UidPool(61000, 1, tmp_path)
    with pool.borrow(), pytest.raises(CapacityError), pool.borrow():
        pass
    assert issubclass(CapacityError, TransientError)
