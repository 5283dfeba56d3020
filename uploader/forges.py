"""What a git forge's webhook delivery says: its signature, repository and event.

Pure functions over headers and the parsed payload, one :class:`Forge` per
supported forge (GitHub, GitLab, Gitea). ``uploader/hooks.py`` finds the service,
verifies with that service's webhook secret and acts; nothing here touches Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

ZERO_SHA = "0" * 40
# owner/name (letters, digits, '.', '_', '-') or a project id: safe in an API path.
STATUS_REPO_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}|[0-9]{1,20}")
PREVIEW_ACTIONS = frozenset({"opened", "synchronize", "synchronized", "reopened"})
GITLAB_MR_ACTIONS = frozenset({"open", "update", "reopen"})

Headers = Mapping[str, str]


class Kind(StrEnum):
    """What a delivery asks of buildq."""

    PING = "ping"
    PUSH = "push"  # a branch moved to ``commit``
    PULL_REQUEST = "pull_request"  # a pull/merge request's head is ``commit``
    IGNORED = "ignored"  # understood, nothing to do (``reason`` says why)


@dataclass(frozen=True, slots=True)
class HookEvent:
    """One delivery, read."""

    kind: Kind
    branch: str | None = None
    commit: str | None = None
    number: int | None = None  # the pull/merge request
    reason: str = ""


class UnsupportedEvent(ValueError):
    """The delivery is an event buildq does not act on (answered 202 with the reason)."""


def _get(document: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(document, dict):
            return None
        document = document.get(name)
    return document


def _text(document: Any, *path: str) -> str | None:
    value = _get(document, *path)
    return value if isinstance(value, str) and value else None


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _push(ref: str | None, after: str | None) -> HookEvent:
    if not ref or not ref.startswith("refs/heads/"):
        return HookEvent(Kind.IGNORED, reason=f"push of {str(ref)[:100]!r} is not a branch")
    branch = ref.removeprefix("refs/heads/")
    if not after or after == ZERO_SHA:
        return HookEvent(Kind.IGNORED, branch=branch, reason=f"branch {branch} was deleted")
    return HookEvent(Kind.PUSH, branch=branch, commit=after.lower())


@dataclass(frozen=True, slots=True)
class Forge:
    """One forge's headers and payload shapes."""

    name: str
    event_header: str
    delivery_header: str
    signature_header: str
    verify_with: Callable[[str, bytes, str], bool]
    repo_paths: tuple[tuple[str, ...], ...]
    read: Callable[[str, Any], HookEvent]
    status_repo_path: tuple[str, ...]  # what the commit status API names the repository by
    extra_delivery_headers: tuple[str, ...] = field(default=())

    def verify(self, headers: Headers, body: bytes, secret: str) -> bool:
        """Whether the delivery carries a valid signature (or token) for ``secret``."""
        given = headers.get(self.signature_header)
        return bool(given) and self.verify_with(given or "", body, secret)

    def repositories(self, document: Any) -> list[str]:
        """The repository URLs the payload names (clone, ssh and web URLs)."""
        return [url for path in self.repo_paths if (url := _text(document, *path))]

    def delivery(self, headers: Headers, body: bytes) -> str:
        """The delivery id (a digest of the body when the forge sends none)."""
        for name in (self.delivery_header, *self.extra_delivery_headers):
            value = headers.get(name, "").strip()
            if value:
                return value[:200]
        return "body-" + hashlib.sha256(body).hexdigest()

    def status_repo(self, document: Any) -> str | None:
        """The repository as the forge's commit status API names it: ``owner/name``
        (GitHub, Gitea) or the numeric project id (GitLab); None when absent or odd."""
        value = _get(document, *self.status_repo_path)
        text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        return text if STATUS_REPO_RE.fullmatch(text) else None

    def event(self, headers: Headers, document: Any) -> HookEvent:
        """The delivery read; UnsupportedEvent for an event type buildq ignores."""
        return self.read(headers.get(self.event_header, "").strip(), document)


def _github_signature(given: str, body: bytes, secret: str) -> bool:
    expected = "sha256=" + _hmac_hex(secret, body)
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())


def _gitea_signature(given: str, body: bytes, secret: str) -> bool:
    return hmac.compare_digest(_hmac_hex(secret, body).encode(), given.strip().lower().encode())


def _gitlab_token(given: str, body: bytes, secret: str) -> bool:
    return hmac.compare_digest(
        hashlib.sha256(secret.encode()).digest(), hashlib.sha256(given.encode()).digest()
    )


def _github_like(name: str, document: Any, *, fork_field: str) -> HookEvent:
    if name == "ping":
        return HookEvent(Kind.PING)
    if name == "push":
        return _push(_text(document, "ref"), _text(document, "after"))
    if name != "pull_request":
        raise UnsupportedEvent(f"event {name[:60]!r} is not handled (ping, push, pull_request)")
    action = _text(document, "action") or ""
    number = _get(document, "pull_request", "number") or _get(document, "number")
    if action not in PREVIEW_ACTIONS:
        return HookEvent(Kind.IGNORED, reason=f"pull request action {action[:40]!r}")
    head = _get(document, "pull_request", "head", "repo", fork_field)
    base = _get(document, "pull_request", "base", "repo", fork_field)
    if head != base:
        return HookEvent(Kind.IGNORED, reason="pull requests from forks are not built")
    sha = _text(document, "pull_request", "head", "sha")
    branch = _text(document, "pull_request", "head", "ref")
    if not sha or not isinstance(number, int):
        raise UnsupportedEvent("pull_request payload without a head commit or number")
    return HookEvent(Kind.PULL_REQUEST, branch=branch, commit=sha.lower(), number=number)


def _github(name: str, document: Any) -> HookEvent:
    return _github_like(name, document, fork_field="full_name")


def _gitea(name: str, document: Any) -> HookEvent:
    return _github_like(name, document, fork_field="id")


def _gitlab(name: str, document: Any) -> HookEvent:
    if name == "Push Hook":
        after = _text(document, "checkout_sha") or _text(document, "after")
        return _push(_text(document, "ref"), after)
    if name != "Merge Request Hook":
        raise UnsupportedEvent(
            f"event {name[:60]!r} is not handled (Push Hook, Merge Request Hook)"
        )
    attrs = _get(document, "object_attributes") or {}
    action = _text(attrs, "action") or ""
    if action not in GITLAB_MR_ACTIONS:
        return HookEvent(Kind.IGNORED, reason=f"merge request action {action[:40]!r}")
    if _get(attrs, "source_project_id") != _get(attrs, "target_project_id"):
        return HookEvent(Kind.IGNORED, reason="merge requests from forks are not built")
    sha = _text(attrs, "last_commit", "id")
    number = _get(attrs, "iid")
    if not sha or not isinstance(number, int):
        raise UnsupportedEvent("merge request payload without a last commit or iid")
    branch = _text(attrs, "source_branch")
    return HookEvent(Kind.PULL_REQUEST, branch=branch, commit=sha.lower(), number=number)


GITHUB_REPO = (("repository", "clone_url"), ("repository", "ssh_url"), ("repository", "html_url"))
FORGES = {
    "github": Forge(
        name="github",
        event_header="x-github-event",
        delivery_header="x-github-delivery",
        signature_header="x-hub-signature-256",
        verify_with=_github_signature,
        repo_paths=GITHUB_REPO,
        read=_github,
        status_repo_path=("repository", "full_name"),
    ),
    "gitea": Forge(
        name="gitea",
        event_header="x-gitea-event",
        delivery_header="x-gitea-delivery",
        signature_header="x-gitea-signature",
        verify_with=_gitea_signature,
        repo_paths=GITHUB_REPO,
        read=_gitea,
        status_repo_path=("repository", "full_name"),
    ),
    "gitlab": Forge(
        name="gitlab",
        event_header="x-gitlab-event",
        delivery_header="x-gitlab-event-uuid",
        signature_header="x-gitlab-token",
        verify_with=_gitlab_token,
        repo_paths=(
            ("project", "git_http_url"),
            ("project", "git_ssh_url"),
            ("project", "web_url"),
            ("repository", "git_http_url"),
        ),
        read=_gitlab,
        status_repo_path=("project", "id"),
        extra_delivery_headers=("idempotency-key",),
    ),
}
