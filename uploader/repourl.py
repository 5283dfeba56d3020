"""Repository URLs from requests: parsed and checked before git ever sees them.

Only ``https://host[:port]/path`` reaches git (plus ``file:///abs/path`` and absolute
local paths when local repositories are allowed). Everything git would interpret
specially is refused by construction: remote helpers (``ext::``, ``fd::``), option
look-alikes (leading ``-``), other transports (``ssh://-oProxyCommand=…``),
credentials, queries, shell expansion bait and control characters.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from shared.core.errors import ValidationError
from uploader.netcheck import HostPolicy, check_host_name

MAX_URL_CHARS = 2048
COMMIT_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
REF_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+-]{1,255}(?<![./])$")
# Path characters git, curl and a shell all read the same way: no `$`, `~`, quotes,
# backslashes or spaces; percent-escapes are passed on verbatim.
HTTPS_PATH_RE = re.compile(r"^(?:/(?:[A-Za-z0-9._+-]|%[0-9A-Fa-f]{2})+)+/?$")
EXPANSION_BAIT = frozenset("$~`\\\"'")


def validate_repo_url(url: str, *, allow_local: bool, hosts: HostPolicy | None = None) -> str:
    """The URL git should clone, or ValidationError saying why it is refused.

    Accepted: ``https://host/path`` without credentials or query; with
    ``allow_local``, also ``file:///abs/path`` and absolute local paths. IP-literal
    hosts must be public; ``hosts`` applies the operator's allow/deny lists.
    """
    if not url or len(url) > MAX_URL_CHARS:
        raise ValidationError(f"repo_url must be 1-{MAX_URL_CHARS} characters")
    if any(ord(c) < 33 or 127 <= ord(c) < 160 or c in "\u2028\u2029\ufeff" for c in url):
        raise ValidationError("repo_url must not contain whitespace or control characters")
    if url.startswith("-"):
        raise ValidationError("repo_url must not start with '-'")
    if "::" in url.split("/", 1)[0]:
        raise ValidationError("git remote-helper URLs (such as ext::) are refused")
    if any(c in EXPANSION_BAIT for c in url):
        raise ValidationError("repo_url must not contain $, ~, `, quotes or backslashes")
    parts = urlsplit(url)
    if url.startswith("/") or parts.scheme == "file":
        return _local(url, parts, allow_local=allow_local)
    return _https(url, parts, hosts)


def _https(url: str, parts: SplitResult, hosts: HostPolicy | None) -> str:
    if parts.scheme != "https" or not url.lower().startswith("https://"):
        raise ValidationError("repo_url must be an https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(
            "repo_url must not contain credentials; configure a token in settings instead"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValidationError("repo_url must not have a query string or fragment")
    if not parts.hostname or not parts.path.strip("/"):
        raise ValidationError("repo_url must name a host and a repository path")
    try:
        port = parts.port
    except ValueError:
        raise ValidationError("repo_url has an invalid port") from None
    if not HTTPS_PATH_RE.fullmatch(parts.path):
        raise ValidationError(
            "repo_url path may only contain letters, digits, '.', '_', '+', '-', '/' "
            "and percent-escapes"
        )
    if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
        raise ValidationError("repo_url path must not contain '.' or '..' segments")
    host = check_host_name(parts.hostname)
    if hosts is not None:
        hosts.check(host)
    netloc = host if port is None else f"{host}:{port}"
    return f"https://{netloc}{parts.path}"


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
    if any(ord(c) < 32 or ord(c) == 127 for c in path) or any(c in EXPANSION_BAIT for c in path):
        raise ValidationError("local repository path has a control or shell character")
    if any(part.startswith("-") for part in path.split("/")):
        raise ValidationError("local repository path components must not start with '-'")
    resolved = Path(path)
    if not resolved.is_dir():
        raise ValidationError(f"local repository {path!r} does not exist")
    return str(resolved)


def validate_ref(ref: str) -> str:
    """A branch or tag name safe to hand to ``git clone --branch``, or a full commit
    id (:func:`is_commit_id`, lower-cased), which :func:`uploader.clone.clone` fetches."""
    if COMMIT_RE.fullmatch(ref.lower()):
        return ref.lower()
    if not REF_RE.fullmatch(ref) or "@{" in ref or ref.endswith(".lock"):
        raise ValidationError(
            f"invalid ref {ref[:80]!r}: use a branch or tag name, or a full commit id"
        )
    return ref


def is_commit_id(ref: str) -> bool:
    """Whether ``ref`` is a full commit id (40 hex digits, or 64 for SHA-256 repositories).

    Shorter hex strings stay branch or tag names: an abbreviation is ambiguous."""
    return COMMIT_RE.fullmatch(ref) is not None


def url_host_port(url: str) -> tuple[str, int] | None:
    """(host, port) of an https URL accepted by :func:`validate_repo_url`, else None."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    return parts.hostname, parts.port or 443
