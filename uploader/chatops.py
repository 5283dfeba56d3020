"""``POST /chatops``: Slack and Mattermost slash commands, verified, executed once.

Slack requests carry ``X-Slack-Signature: v0=<hex>``, an HMAC-SHA256 with the signing
secret over ``v0:{X-Slack-Request-Timestamp}:{raw body}``; the timestamp must be
within five minutes of now. Mattermost requests carry the command's ``token`` form
field. Both comparisons are constant-time; anything unverifiable gets 401 and changes
nothing. The workspace (``team_id``) must be one ``BUILDQ_CHAT_USERS`` names (403
otherwise); the user id maps to the identity the command runs as. A delivery seen
before (a retry, or a second replica behind a balancer) gets the first delivery's
answer and is not executed again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from shared.core.settings import Settings
from uploader.auth import Authenticator, ChatDirectory, parse_chat_users, parse_tokens
from uploader.chatops_commands import ChatRequest, ephemeral, execute
from uploader.team_api import TeamDep

router = APIRouter(tags=["chatops"])

MAX_BODY_BYTES = 16 * 1024
MAX_SKEW_S = 300
DEDUPE_TTL_MS = 15 * 60 * 1000  # Slack: one trigger_id per invocation
DEDUPE_TTL_NO_TRIGGER_MS = 60 * 1000  # without one, identical commands within a minute
PENDING = "pending"
SIGNATURE_RE = re.compile(r"v0=[0-9a-f]{64}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def chatops_clock() -> Callable[[], float]:
    """FastAPI dependency: the wall clock for timestamp checks (tests override it)."""
    return time.time


Clock = Annotated[Callable[[], float], Depends(chatops_clock)]


def slack_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack computes for ``body`` at ``timestamp``."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest()


def verify_slack(
    secret: bytes, timestamp: str | None, signature: str | None, body: bytes, now_s: float
) -> bool:
    """True for a well-formed, fresh signature made with ``secret`` over ``body``."""
    if not timestamp or not signature:
        return False
    if not TIMESTAMP_RE.fullmatch(timestamp) or not SIGNATURE_RE.fullmatch(signature):
        return False  # malformed: non-ASCII, another version, absurd length
    if abs(now_s - int(timestamp)) > MAX_SKEW_S:
        return False  # stale, or from the future: a replay or a broken clock
    expected = slack_signature(secret, timestamp, body)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))


def verify_mattermost(expected: str, form: Mapping[str, str]) -> bool:
    """True when the form's ``token`` is the configured Mattermost command token."""
    given = form.get("token", "")
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def parse_form(body: bytes) -> dict[str, str]:
    """The form fields of an ``application/x-www-form-urlencoded`` body (last wins)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "malformed form body") from exc
    return dict(pairs)


def authenticate(settings: Settings, headers: Mapping[str, str], body: bytes, now_s: float) -> str:
    """The platform a request verifiably came from, or 401."""
    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if timestamp is not None or signature is not None:
        secret = settings.slack_signing_secret
        if secret is not None and verify_slack(
            secret.get_secret_value().encode(), timestamp, signature, body, now_s
        ):
            return "slack"
        raise HTTPException(401, "invalid, stale or unsigned Slack request")
    token = settings.mattermost_token
    if token is not None:
        try:
            form = parse_form(body)
        except HTTPException:
            form = {}
        if verify_mattermost(token.get_secret_value(), form):
            return "mattermost"
    raise HTTPException(401, "unsigned or unverified chat request")


@lru_cache(maxsize=4)
def chat_directory(settings: Settings) -> ChatDirectory:
    """Chat users and the identities their names have in ``BUILDQ_API_TOKENS``."""
    raw = settings.api_tokens.get_secret_value() if settings.api_tokens else None
    known = Authenticator(parse_tokens(raw)).by_name
    return ChatDirectory(parse_chat_users(settings.chat_users), known)


def fingerprint(request: ChatRequest) -> tuple[str, int]:
    """The dedupe key part for ``request`` and how long duplicates are recognised."""
    parts = (
        request.platform,
        request.team_id,
        request.channel_id,
        request.user_id,
        request.command,
        request.text,
        request.trigger_id,
    )
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest, DEDUPE_TTL_MS if request.trigger_id else DEDUPE_TTL_NO_TRIGGER_MS


async def read_body(request: Request) -> bytes:
    """The raw body, at most 16 KiB (413 beyond)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"chat requests are limited to {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/chatops")
async def chatops(request: Request, t: TeamDep, clock: Clock) -> JSONResponse:
    """Run one slash command (lock, unlock, status, claim, release, claims, queue,
    deploy, help) and answer in Slack's JSON, which Mattermost also accepts."""
    body = await read_body(request)
    platform = authenticate(t.svc.settings, request.headers, body, clock())
    chat = ChatRequest.from_form(platform, parse_form(body))
    directory = chat_directory(t.svc.settings)
    if chat.team_id not in directory.teams:
        raise HTTPException(403, "this chat workspace is not configured (BUILDQ_CHAT_USERS)")
    who = directory.identity(chat.team_id, chat.user_id)
    digest, ttl_ms = fingerprint(chat)
    key = t.svc.keys.idem(f"chatops:{digest}")
    redis = t.svc.redis
    if not await redis.set(key, PENDING, nx=True, px=ttl_ms):
        earlier = await redis.get(key)
        if earlier and earlier != PENDING:
            answer: dict[str, Any] = json.loads(earlier)
            return JSONResponse(answer)
        return JSONResponse(ephemeral("That command is already being handled."))
    try:
        answer = await execute(chat, t, who)
    except Exception:
        await redis.delete(key)  # not done: a retry may run it
        raise
    await redis.set(key, json.dumps(answer), xx=True, px=ttl_ms)
    return JSONResponse(answer)
