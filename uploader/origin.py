"""Which hosts the API answers to, and which requests may change anything.

- **Trusted hosts**: in local mode (or whenever ``BUILDQ_ALLOWED_HOSTS`` is set) the
  ``Host`` header must name an allowed host (any port) or the answer is 400: a page
  that rebinds its DNS name to 127.0.0.1 is not the API's origin.
- **No cross-site writes**: a state-changing request needs ``Content-Type:
  application/json`` or an ``Authorization`` header (415 otherwise: a foreign page
  cannot send either without a CORS preflight), and a foreign ``Origin`` is 403.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import Scope

from shared.core.settings import Settings
from uploader.refused import Refused

DEFAULT_HOSTS = "127.0.0.1,localhost,[::1]"


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first ``name`` header of the request, as sent (``name`` in lower case)."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header or URL authority, without port, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        return host
    host, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return host or None


def allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """``BUILDQ_ALLOWED_HOSTS`` (default loopback names) plus the API URL's host."""
    raw = settings.allowed_hosts if settings.allowed_hosts is not None else DEFAULT_HOSTS
    hosts = [h.strip().lower().strip("[]") for h in raw.split(",") if h.strip()]
    api_host = urlsplit(settings.api_url).hostname
    if api_host:
        hosts.append(api_host.lower())
    return tuple(dict.fromkeys(hosts))


def host_allowed(host: str | None, patterns: tuple[str, ...]) -> bool:
    """True when ``host`` matches an allowed name, ``*``, or a ``*.suffix`` pattern."""
    if not host:
        return False
    for pattern in patterns:
        if pattern in ("*", host):
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """The API's own hosts and listeners, and whether ``Host`` is checked."""

    hosts: tuple[str, ...]
    check_host: bool
    port: int
    sites_port: int

    @classmethod
    def of(cls, settings: Settings, *, local_mode: bool) -> OriginPolicy:
        return cls(
            hosts=allowed_hosts(settings),
            check_host=local_mode or settings.allowed_hosts is not None,
            port=settings.port,
            sites_port=settings.sites_port,
        )

    def check_host_header(self, scope: Scope) -> None:
        """400 when the ``Host`` header names a host the API does not answer to."""
        if not self.check_host:
            return
        given = (header(scope, b"host") or b"").decode("latin-1")
        if not host_allowed(host_name(given), self.hosts):
            raise Refused(
                400, f"host {given[:100]!r} is not an allowed host (BUILDQ_ALLOWED_HOSTS)"
            )

    def check_cross_site(self, scope: Scope, *, form: bool = False) -> None:
        """403 for a foreign Origin; 415 for a body a cross-site form could send.

        ``form``: one of our own forms (``POST /login``, ``/logout``): a form body is
        fine, but the browser's ``Origin`` must be there and name the API."""
        origin = header(scope, b"origin")
        if origin is None and form:
            raise Refused(403, "a form post needs the browser's Origin header")
        if origin is not None:
            parts = urlsplit(origin.decode("latin-1").strip())
            try:
                port = parts.port
            except ValueError:
                port = None
            on_sites = port == self.sites_port != self.port
            if not host_allowed(parts.hostname, self.hosts) or on_sites:
                raise Refused(403, "cross-origin requests may not change anything")
        if form or header(scope, b"authorization") is not None:
            return  # a foreign page cannot set it without a CORS preflight
        media = (header(scope, b"content-type") or b"").decode("latin-1")
        if media.split(";", 1)[0].strip().lower() != "application/json":
            raise Refused(
                415, "state-changing requests need Content-Type: application/json (or a token)"
            )
