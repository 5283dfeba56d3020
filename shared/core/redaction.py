"""What records and logs may show of secrets: URLs without userinfo, build overrides
without their command or env values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` without userinfo, so tokens never reach records or logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


HIDDEN = "***"


def redact_build(build: Mapping[str, Any]) -> dict[str, Any]:
    """The public copy of a build override: the command and every ``env`` value
    hidden (names kept), so records, API answers and S3 copies never hold them."""
    public = dict(build)
    if "command" in public:
        public["command"] = HIDDEN
    if isinstance(public.get("env"), Mapping):
        public["env"] = dict.fromkeys(public["env"], HIDDEN)
    return public


__all__ = ["HIDDEN", "redact_build", "redact_url"]
