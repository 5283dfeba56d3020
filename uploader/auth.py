"""Who is calling, and what they may do: identities, roles and their decisions.

``BUILDQ_API_TOKENS`` holds comma-separated entries ``name:role=token`` or
``name:role:svc1|svc2=token`` (service names or globs such as ``docs-*``). Tokens
are kept only as SHA-256 digests and compared with :func:`hmac.compare_digest`
against every entry, without an early exit. With no tokens the uploader is in
single-user local mode: every caller is the local admin (see ``uploader/origin.py``
for the ``Host`` checks and ``uploader/__main__.py`` for the loopback bind that make
that safe). ``uploader/access.py`` turns a request into an :class:`Identity`.

``BUILDQ_CHAT_USERS`` maps a chat workspace and user id to one of these identities:
``team:user=name``. Parsing is pure; :func:`decide` is the one place a role is
turned into yes or no.
"""

from __future__ import annotations

import fnmatch
import getpass
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from fastapi import HTTPException

from shared.coord.lockbook import OWNER_RE
from shared.core.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
SERVICE_GLOB_RE = re.compile(r"^[a-z0-9*?][a-z0-9*?-]{0,62}$")
CHAT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TOKEN_FORM = "name:role=token or name:role:svc1|svc2=token (role: admin, deployer, viewer)"  # noqa: S105 (a format, not a secret)
LOCAL_NAME = "local"


class Role(StrEnum):
    """What an identity may do; each role includes the ones before it."""

    VIEWER = "viewer"
    DEPLOYER = "deployer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


class Action(StrEnum):
    """Something a caller asks to do; :func:`decide` says who may."""

    READ = "read"
    DEPLOY = "deploy"  # submit a deployment of a service
    OPERATE = "operate"  # cancel or retry a job of a service
    LOCK = "lock"  # take or release one's own lock on a service
    CLAIM = "claim"  # take or release one's own staging claim
    FORCE = "force"  # release someone else's lock or claim
    FLEET = "fleet"  # pause, resume, cap the fleet


MINIMUM_ROLE = {
    Action.READ: Role.VIEWER,
    Action.DEPLOY: Role.DEPLOYER,
    Action.OPERATE: Role.DEPLOYER,
    Action.LOCK: Role.DEPLOYER,
    Action.CLAIM: Role.DEPLOYER,
    Action.FORCE: Role.ADMIN,
    Action.FLEET: Role.ADMIN,
}
SERVICE_SCOPED = frozenset({Action.DEPLOY, Action.OPERATE, Action.LOCK})


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller: a name (lock and claim owner), a role, and optionally the services
    (names or globs) it may deploy, operate and lock; ``None`` means every service."""

    name: str
    role: Role
    services: tuple[str, ...] | None = None

    def covers(self, service: str) -> bool:
        """True when ``service`` is one this identity may act on."""
        if self.role is Role.ADMIN or self.services is None:
            return True
        return any(fnmatch.fnmatchcase(service, pattern) for pattern in self.services)


@dataclass(frozen=True, slots=True)
class TokenEntry:
    identity: Identity
    digest: bytes


def decide(identity: Identity, action: Action, service: str | None = None) -> str | None:
    """None when ``identity`` may do ``action`` (on ``service``), else why not."""
    needed = MINIMUM_ROLE[action]
    if not identity.role.at_least(needed):
        return (
            f"{identity.name} ({identity.role.value}) may not {action.value}: "
            f"that needs the {needed.value} role"
        )
    if action in SERVICE_SCOPED and service is not None and not identity.covers(service):
        allowed = "|".join(identity.services or ())
        return f"{identity.name} may {action.value} only {allowed}, not {service}"
    return None


def require(identity: Identity, action: Action, service: str | None = None) -> None:
    """403 with :func:`decide`'s reason when ``identity`` may not."""
    reason = decide(identity, action, service)
    if reason is not None:
        raise HTTPException(403, reason)


def digest(token: str | bytes) -> bytes:
    raw = token.encode("utf-8") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def _entry(text: str, index: int) -> TokenEntry:
    where = f"BUILDQ_API_TOKENS entry {index}"
    head, sep, token = text.partition("=")
    parts = head.split(":")
    if not sep:
        raise ConfigError(
            f"{where} is a bare token: each token now names an identity and a role, "
            f"as {TOKEN_FORM}, e.g. alice:admin=<token>"
        )
    if not token.strip() or len(parts) not in (2, 3):
        raise ConfigError(f"{where} is not in the form {TOKEN_FORM}")
    name, role_text = parts[0].strip(), parts[1].strip().lower()
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: invalid name {name[:64]!r} (letters, digits, . _ @ + -)")
    try:
        role = Role(role_text)
    except ValueError:
        raise ConfigError(f"{where}: unknown role {role_text[:20]!r}; use {TOKEN_FORM}") from None
    services: tuple[str, ...] | None = None
    if len(parts) == 3:
        services = tuple(s.strip() for s in parts[2].split("|") if s.strip())
        bad = [s for s in services if not SERVICE_GLOB_RE.fullmatch(s)]
        if not services or bad:
            raise ConfigError(f"{where}: invalid service list {parts[2][:80]!r}")
    return TokenEntry(Identity(name, role, services), digest(token.strip()))


def parse_tokens(raw: str | None) -> tuple[TokenEntry, ...]:
    """The entries of ``BUILDQ_API_TOKENS``; ConfigError (never showing a token) on a
    malformed entry, a duplicate name or a duplicate token."""
    entries = tuple(
        _entry(text.strip(), i)
        for i, text in enumerate((raw or "").split(","), start=1)
        if text.strip()
    )
    names = [e.identity.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError("BUILDQ_API_TOKENS: each name may appear only once")
    if len({e.digest for e in entries}) != len(entries):
        raise ConfigError("BUILDQ_API_TOKENS: two entries share one token")
    return entries


class Authenticator:
    """Matches a bearer token against every configured entry in constant time."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self.entries = tuple(entries)
        self.by_name = {e.identity.name: e.identity for e in self.entries}

    @property
    def local_mode(self) -> bool:
        """No tokens configured: the single-user local mode."""
        return not self.entries

    def match(self, token: bytes) -> Identity | None:
        """The identity whose token is ``token``, or None; every entry is compared."""
        given = digest(token)
        found: Identity | None = None
        for entry in self.entries:  # no early exit: every entry costs the same
            if hmac.compare_digest(given, entry.digest):
                found = entry.identity
        return found

    def fingerprint(self, name: str) -> str | None:
        """A mark of ``name``'s token (a hash of its digest, not the token) that a login
        session keeps, so a session outlives neither its token's rotation nor removal."""
        for entry in self.entries:
            if entry.identity.name == name:
                return hashlib.sha256(b"buildq-session\0" + entry.digest).hexdigest()
        return None

    def by_fingerprint(self, name: str, mark: str) -> Identity | None:
        """The identity named ``name`` while its token still has ``mark``, else None."""
        current = self.fingerprint(name)
        if current is None or not hmac.compare_digest(current.encode(), mark.encode()):
            return None
        return self.by_name[name]


def local_identity() -> Identity:
    """The caller in local mode: an admin named after the OS user (else ``local``)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = LOCAL_NAME
    return Identity(name if OWNER_RE.fullmatch(name) else LOCAL_NAME, Role.ADMIN)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_local_bind(host: str, entries: tuple[TokenEntry, ...]) -> None:
    """ConfigError when the API would listen beyond loopback without any token."""
    if not entries and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without API tokens: with no BUILDQ_API_TOKENS "
            "buildq is a single-user local service bound to 127.0.0.1. Set "
            f"BUILDQ_API_TOKENS ({TOKEN_FORM}) or BUILDQ_HOST=127.0.0.1"
        )


def parse_chat_users(raw: str | None) -> dict[tuple[str, str], str]:
    """``BUILDQ_CHAT_USERS`` (``team:user=name,…``) as {(team, user): name}."""
    users: dict[tuple[str, str], str] = {}
    for i, text in enumerate((raw or "").split(","), start=1):
        if not text.strip():
            continue
        ids, sep, name = text.strip().partition("=")
        team, colon, user = ids.partition(":")
        team, user, name = team.strip(), user.strip(), name.strip()
        if not (sep and colon and CHAT_ID_RE.fullmatch(team) and CHAT_ID_RE.fullmatch(user)):
            raise ConfigError(f"BUILDQ_CHAT_USERS entry {i} is not in the form team:user=name")
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"BUILDQ_CHAT_USERS entry {i}: invalid name {name[:64]!r}")
        users[(team, user)] = name
    return users


@dataclass(frozen=True, slots=True)
class ChatDirectory:
    """Chat workspaces and users mapped to identities."""

    users: dict[tuple[str, str], str]
    known: dict[str, Identity]

    @property
    def teams(self) -> frozenset[str]:
        return frozenset(team for team, _ in self.users)

    def identity(self, team_id: str, user_id: str) -> Identity | None:
        """The mapped identity (role from its token entry, else deployer), or None."""
        name = self.users.get((team_id, user_id))
        if name is None:
            return None
        return self.known.get(name) or Identity(name, Role.DEPLOYER)
