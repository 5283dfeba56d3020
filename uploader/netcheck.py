"""Where a clone may connect: host policy, address classification, resolve-and-pin.

A repository host is checked twice: its spelling when the request arrives (IP
literals in every form inet_aton accepts — ``127.1``, ``2130706433``,
``0x7f000001`` — bracketed IPv6, ``localhost``), and its DNS answer right before
the clone. Every address of the answer must be globally routable; the one checked
is then pinned for git (``http.curloptResolve``) so a second, rebound DNS answer is
never used.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from shared.core.errors import TransientError, ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
SIXTO4 = ipaddress.IPv6Network("2002::/16")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")


# getaddrinfo failures that say "the resolver, now", not "no such host".
TRANSIENT_DNS = frozenset({socket.EAI_AGAIN, socket.EAI_FAIL, getattr(socket, "EAI_SYSTEM", -11)})


class HostUnresolved(TransientError):
    """The resolver failed for now (not "no such host"): retried like the network."""


class HostRefused(ValidationError):
    """The repository host is not allowed, or resolves to a non-global address."""


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an address if it is an IP literal in any spelling, else None.

    IPv4 follows inet_aton, which is what git's resolver accepts: ``127.1``,
    ``2130706433``, ``0x7f000001`` and ``0177.0.0.1`` all mean 127.0.0.1.
    """
    text = host.strip("[]")
    if ":" in text:
        if "%" in text:
            raise HostRefused("IPv6 zone identifiers are refused in repo_url")
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise HostRefused(f"invalid IPv6 address {host[:60]!r}") from None
    if not re.fullmatch(r"[0-9a-fA-FxX.]+", text) or not text[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.teredo is not None:
        return address.teredo[1]
    if address.sixtofour is not None or address in SIXTO4:
        return address.sixtofour
    if address in NAT64 or address in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # deprecated ::a.b.c.d
        return ipaddress.IPv4Address(int(address))
    return None


def is_public(address: IPAddress) -> bool:
    """Whether a clone may connect to ``address``: globally routable, unicast."""
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return True


def _non_global(address: IPAddress, host: str) -> HostRefused:
    return HostRefused(
        f"repository host {host[:100]!r} resolves to non-global address {address}; "
        "loopback, private, link-local and reserved addresses are refused"
    )


def check_address(address: IPAddress, host: str) -> None:
    """Raise HostRefused unless ``address`` is public."""
    if not is_public(address):
        raise _non_global(address, host)


def _normalise_host(host: str) -> str:
    return host.lower().rstrip(".")


def check_host_name(host: str) -> str:
    """The normalised host if its spelling is acceptable (before any DNS), else raise."""
    name = _normalise_host(host)
    address = parse_ip(name)
    if address is not None:
        check_address(address, host)
        return str(address) if address.version == 4 else f"[{address}]"
    if name in LOCAL_NAMES or name.endswith(LOCAL_SUFFIXES):
        raise HostRefused(f"repository host {host[:100]!r} is a local name")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise HostRefused(f"repository host {host[:100]!r} is not a valid host name") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(LABEL_RE.fullmatch(label) for label in labels):
        raise HostRefused(f"repository host {host[:100]!r} is not a valid host name")
    return ascii_name


def _patterns(raw: Iterable[str]) -> tuple[str, ...]:
    return tuple(_normalise_host(p.strip()) for p in raw if p.strip())


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Operator allow/deny lists of repository hosts (``*.example.com`` globs)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def of(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> HostPolicy:
        return cls(_patterns(allow), _patterns(deny))

    def check(self, host: str) -> None:
        """Raise HostRefused if ``host`` is denied, or not allowed when a list is set."""
        name = _normalise_host(host)
        if any(fnmatch.fnmatchcase(name, p) for p in self.deny):
            raise HostRefused(f"repository host {name[:100]!r} is denied by the operator")
        if self.allow and not any(fnmatch.fnmatchcase(name, p) for p in self.allow):
            raise HostRefused(f"repository host {name[:100]!r} is not in the operator's allowlist")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (blocking: call from a worker thread)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in TRANSIENT_DNS:
            raise HostUnresolved(
                f"cannot resolve repository host {host[:100]!r} now: {exc.strerror}"
            ) from None
        raise HostRefused(f"cannot resolve repository host {host[:100]!r}: {exc}") from None
    except UnicodeError as exc:
        raise HostRefused(f"cannot resolve repository host {host[:100]!r}: {exc}") from None
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class Pin:
    """A checked address for one host and port, as git's ``curloptResolve`` wants it."""

    host: str
    port: int
    address: IPAddress

    @property
    def curl_resolve(self) -> str:
        shown = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.host}:{self.port}:{shown}"


@dataclass(frozen=True, slots=True)
class Resolution:
    """Resolves a host and refuses it unless every answer is public."""

    resolver: Resolver = system_resolver
    allowed: Callable[[IPAddress], bool] = field(default=is_public)

    def pin(self, host: str, port: int) -> Pin:
        name = check_host_name(host)
        literal = parse_ip(name)
        answers: Sequence[str] = [str(literal)] if literal else self.resolver(name, port)
        addresses: list[IPAddress] = []
        for raw in answers:
            try:
                addresses.append(ipaddress.ip_address(raw.split("%", 1)[0]))
            except ValueError:
                raise HostRefused(f"unexpected address {raw[:60]!r} for {host[:100]!r}") from None
        if not addresses:
            raise HostRefused(f"repository host {host[:100]!r} has no address")
        for address in addresses:
            if not self.allowed(address):
                raise _non_global(address, host)
        return Pin(name, port, addresses[0])
