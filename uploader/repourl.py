"""Repository URLs from requests: parsed and checked before git ever sees them."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from shared.errors import ValidationError

MAX_URL_CHARS = 2048
REF_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+-]{1,255}(?<![./])$")


def validate_repo_url(url: str, *, allow_local: bool) -> str:
    """The URL git should clone, or ValidationError saying why it is refused.

    Accepted: ``https://host/path`` without credentials or query; with
    ``allow_local``, also ``file:///abs/path`` and absolute local paths.
    """
    if not url or len(url) > MAX_URL_CHARS:
        raise ValidationError(f"repo_url must be 1-{MAX_URL_CHARS} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValidationError("repo_url must not contain whitespace or control characters")
    if url.startswith("-"):
        raise ValidationError("repo_url must not start with '-'")
    if "::" in url.split("/", 1)[0]:
        raise ValidationError("git remote-helper URLs (such as ext::) are refused")
    parts = urlsplit(url)
    if url.startswith("/") or parts.scheme == "file":
        return _local(url, parts, allow_local=allow_local)
    if parts.scheme != "https":
        raise ValidationError("repo_url must be an https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(
            "repo_url must not contain credentials; configure a token in settings instead"
        )
    if parts.query or parts.fragment:
        raise ValidationError("repo_url must not have a query string or fragment")
    if not parts.hostname or not parts.path.strip("/"):
        raise ValidationError("repo_url must name a host and a repository path")
    return url


def _local(url: str, parts: SplitResult, *, allow_local: bool) -> str:
    if not allow_local:
        raise ValidationError("local repositories are not allowed (BUILDQ_ALLOW_LOCAL_REPOS)")
    if url.startswith("/"):
        return _local_path(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValidationError("file:// URLs must be file:///absolute/path")
    return "file://" + _local_path(unquote(parts.path))


def _local_path(path: str) -> str:
    if not path.startswith("/") or "\x00" in path:
        raise ValidationError("local repository paths must be absolute")
    resolved = Path(path)
    if not resolved.is_dir():
        raise ValidationError(f"local repository {path!r} does not exist")
    return str(resolved)


def validate_ref(ref: str) -> str:
    """A branch or tag name safe to hand to ``git clone --branch``."""
    if not REF_RE.fullmatch(ref) or "@{" in ref or ref.endswith(".lock"):
        raise ValidationError(f"invalid ref {ref[:80]!r}: use a branch or tag name")
    return ref
