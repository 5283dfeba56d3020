"""What records and logs may show of secrets: URLs without userinfo, build overrides
without their command or env values, build output without service secrets."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit


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


MIN_SECRET_CHARS = 4  # shorter values ("1", "dev") would blot out ordinary output


def _encodings(value: bytes) -> set[bytes]:
    """``value`` and the forms a build commonly prints it in: URL-encoded, and base64
    (standard and URL-safe; padding left off so an unpadded copy matches too). Base64
    also as its whole-group prefix, so ``echo "$S" | base64`` (the value and more)
    is caught except for its last few characters."""
    forms = {value, quote(value, safe="").encode("ascii")}
    whole = value[: len(value) - len(value) % 3]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(encode(value).rstrip(b"="))
        forms.add(encode(whole))
    return forms


class SecretRedactor:
    """Replaces every occurrence of the given secret values in build output by ``***``.

    Works on bytes, line by line: a value spanning lines (a PEM key) is matched per
    line, each of its lines of at least MIN_SECRET_CHARS being a value of its own.
    A caller that must cut a line inside the output keeps :attr:`overlap` bytes back
    (see :meth:`split`) so a value is never split across two log lines.
    """

    def __init__(self, values: Iterable[str]) -> None:
        patterns: set[bytes] = set()
        for value in values:
            for line in {value, *value.splitlines()}:
                part = line.strip("\r\n")
                if len(part) >= MIN_SECRET_CHARS:
                    raw = part.encode("utf-8", "surrogatepass")
                    patterns |= {p for p in _encodings(raw) if len(p) >= MIN_SECRET_CHARS}
        ordered = sorted(patterns, key=lambda p: (-len(p), p))  # longest first
        self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
        self.overlap = max(map(len, ordered), default=1) - 1

    def __bool__(self) -> bool:
        return self._pattern is not None

    def redact(self, data: bytes) -> bytes:
        """``data`` with every secret (and encoding of one) replaced by ``***``."""
        if self._pattern is None:
            return data
        return self._pattern.sub(HIDDEN.encode(), data)

    def split(self, data: bytes) -> tuple[bytes, bytes]:
        """A line too long to wait for its end as (redacted part to write now, rest to
        keep): the rest holds the last :attr:`overlap` bytes, where a value the next
        output completes may begin."""
        data = self.redact(data)
        if self._pattern is None:
            return data, b""
        if len(data) <= self.overlap:
            return b"", data
        cut = len(data) - self.overlap
        return data[:cut], data[cut:]


__all__ = ["HIDDEN", "MIN_SECRET_CHARS", "SecretRedactor", "redact_build", "redact_url"]
