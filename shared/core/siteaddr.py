"""Where sites live: each service and each preview at the root of its own host.

Live sites are served at ``<scheme>://<service>.<sites_domain>[:port]/`` and one
deployment's preview at ``<scheme>://<id>.preview.<sites_domain>[:port]/``, on the
uploader's sites listener: the host picks the site, the path is the file. Every
site is thus its own origin, never the API's. Under ``buildq up`` the domain is
``localhost``, which browsers resolve (with every subdomain) to the loopback address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.core.names import NAME_RE
from shared.core.settings import Settings

JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")
PREVIEW_LABEL = "preview"


class SiteKind(StrEnum):
    """What a sites-origin host names."""

    LIVE = "live"  # a service's live deployment
    PREVIEW = "preview"  # one deployment, live or not


@dataclass(frozen=True, slots=True)
class SiteHost:
    """A parsed sites-origin host: a service (live) or a job id (preview)."""

    kind: SiteKind
    name: str


def _is_local(domain: str) -> bool:
    return domain == "localhost" or domain.endswith(".localhost")


def _origin(settings: Settings, host: str) -> str:
    domain = settings.sites_domain
    scheme = settings.sites_scheme
    if scheme == "auto":
        scheme = "http" if _is_local(domain) else "https"
    port = settings.sites_public_port
    if port is None:  # direct on localhost; behind a TLS proxy on a real domain
        port = settings.sites_port if _is_local(domain) else 0
    default = {"http": 80, "https": 443}[scheme]
    suffix = f":{port}" if port and port != default else ""
    return f"{scheme}://{host}.{domain}{suffix}"


def site_url(settings: Settings, service: str) -> str:
    """The live address of ``service`` (ends with ``/``)."""
    return f"{_origin(settings, service)}/"


def preview_url(settings: Settings, job_id: str) -> str:
    """The address of one deployment's published files (ends with ``/``)."""
    return f"{_origin(settings, f'{job_id}.{PREVIEW_LABEL}')}/"


def parse_host(settings: Settings, host_header: str) -> SiteHost | None:
    """The site a ``Host`` header names, or None if it names none of ours."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal is never a site
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.rstrip(".")
    suffix = "." + settings.sites_domain
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    if label.endswith("." + PREVIEW_LABEL):
        job_id = label[: -len(PREVIEW_LABEL) - 1]
        return SiteHost(SiteKind.PREVIEW, job_id) if JOB_ID_RE.fullmatch(job_id) else None
    if NAME_RE.fullmatch(label):
        return SiteHost(SiteKind.LIVE, label)
    return None
