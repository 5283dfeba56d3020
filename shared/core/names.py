"""Service and environment names: validation and derivation from a repository URL."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from shared.core.errors import ValidationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def validate_name(value: str, what: str = "service") -> str:
    """``value`` if it is a valid service/environment name, else ValidationError."""
    if not NAME_RE.fullmatch(value):
        raise ValidationError(
            f"invalid {what} name {value[:80]!r}: use 1-63 lowercase letters, digits "
            "and '-', starting with a letter or digit"
        )
    return value


def service_from_repo_url(repo_url: str) -> str:
    """The default service name: the repository's last path segment, normalised.

    ``https://example.com/Team/My_Site.git`` becomes ``my-site``. Raises
    ValidationError when nothing valid is left.
    """
    path = urlsplit(repo_url).path if "://" in repo_url else repo_url
    stem = PurePosixPath(path.rstrip("/")).name
    if stem.endswith(".git"):
        stem = stem[:-4]
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:63].rstrip("-")
    if not name:
        raise ValidationError(
            f"cannot derive a service name from {repo_url[:120]!r}; pass 'service' explicitly"
        )
    return validate_name(name)


def validate_relative_dir(value: str, what: str = "root_dir") -> str:
    """A normalised relative directory inside the repository, or ValidationError."""
    if "\\" in value or "\x00" in value or any(ord(c) < 32 for c in value):
        raise ValidationError(f"invalid {what}: backslashes and control characters are refused")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if value.startswith("/") or ".." in parts or len(value) > 255:
        raise ValidationError(
            f"invalid {what} {value[:80]!r}: must be a relative path inside the repository"
        )
    return "/".join(parts)
