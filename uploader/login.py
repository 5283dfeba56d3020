"""Logging in to the dashboard with an API token, for browsers (which cannot send a
bearer header to ``/``, ``/ui/…`` or ``/events``).

- ``GET /login``: a small form (server-rendered, the dashboard's stylesheet, no
  script); with a live session it also says who is logged in and offers log out;
- ``POST /login`` (form body ``token``, ``next``): the token is matched exactly as a
  bearer token is (``Authenticator.match``: constant time over every entry); on a
  match, a session (``uploader/session.py``) and a 303 to ``next`` (the dashboard's
  own pages only); otherwise 401 and the form again. Attempts are limited per client
  address (:data:`ATTEMPTS_PER_WINDOW` a minute, 429 beyond), counted in Redis so the
  limit holds across replicas. The token is never logged;
- ``POST /logout``: ends the session and clears the cookie.

Both posts need the browser's same-origin ``Origin`` header (``uploader/origin.py``).
In local mode (no tokens) there is nothing to log in to: both send the browser to
``/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from uploader.access import SCOPE_KEY, authenticator, safe_next
from uploader.api import Svc
from uploader.auth import Identity
from uploader.dashview import esc
from uploader.ratelimit import window_wait_s
from uploader.refused import Refused
from uploader.session import SessionStore, cookie_header, is_secure, session_cookie
from uploader.state import Services

log = structlog.get_logger("uploader.login")
router = APIRouter(include_in_schema=False)

ATTEMPTS_PER_WINDOW = 10
MAX_TOKEN_CHARS = 1024
FORM_MEDIA = "application/x-www-form-urlencoded"
clock: Callable[[], float] = time.time  # the rate limit's window clock; tests set it
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends ``Origin: null`` with a form post, and
    # the posts need their real Origin (``uploader/origin.py``).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def login_page(next_path: str, *, message: str | None = None, who: Identity | None = None) -> str:
    """The login form (and, when logged in, who and a log-out button)."""
    notice = f'<p class="error" role="alert">{esc(message)}</p>' if message else ""
    current = ""
    if who is not None:
        current = (
            f'<p class="note">Logged in as <b>{esc(who.name)}</b> ({esc(who.role.value)}).</p>'
            '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>buildq: log in</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/ui/static/dashboard.css">'
        '</head><body><header><a href="/" class="brand">buildq</a></header>'
        '<main class="login"><h2>Log in</h2>'
        f"{current}{notice}"
        '<form method="post" action="/login" id="login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        f'maxlength="{MAX_TOKEN_CHARS}" required autofocus>'
        '<button type="submit">Log in</button></form>'
        '<p class="note">One of this server\'s API tokens (<code>BUILDQ_API_TOKENS</code>). '
        "The browser keeps a session cookie, never the token; the session ends after "
        "12 hours, on log out, or when the token is changed.</p>"
        "</main></body></html>"
    )


def _page(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **(headers or {})})


def _redirect(location: str, cookie: str | None = None) -> Response:
    response = RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})
    if cookie is not None:
        response.headers["Set-Cookie"] = cookie
    return response


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def attempt_wait_s(svc: Services, client: str, *, now_s: float | None = None) -> int:
    """Count one login attempt from ``client``; 0 when allowed, else seconds to wait."""
    now = clock() if now_s is None else now_s
    return await window_wait_s(
        svc, lambda window: svc.keys.login_attempts(client, window), ATTEMPTS_PER_WINDOW, now
    )


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the login form could not be read") from None
    return {name: values[0] for name, values in fields.items() if values}


@router.get("/login")
async def login_form(request: Request, svc: Svc, next: str | None = None) -> Response:
    """The login page."""
    if authenticator(svc.settings).local_mode:
        return _redirect("/")
    who = await _session_identity(svc, request)
    return _page(login_page(safe_next(next), who=who))


@router.post("/login")
async def login(request: Request, svc: Svc) -> Response:
    """Trade a valid API token for a session cookie."""
    auth = authenticator(svc.settings)
    if auth.local_mode:
        return _redirect("/")
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != FORM_MEDIA:
        raise Refused(415, f"the login form is sent as {FORM_MEDIA}")
    form = _form(await request.body())
    target = safe_next(form.get("next"))
    client = _client(request)
    wait_s = await attempt_wait_s(svc, client)
    if wait_s:
        log.warning("login.rate_limited", client=client)
        message = f"Too many attempts; try again in {wait_s}s."
        return _page(login_page(target, message=message), 429, {"Retry-After": str(wait_s)})
    token = form.get("token", "").strip()
    identity = auth.match(token.encode("utf-8")) if 0 < len(token) <= MAX_TOKEN_CHARS else None
    if identity is None:
        log.warning("login.refused", client=client)
        return _page(login_page(target, message="That token is not valid."), 401)
    session_id = await SessionStore(svc.redis, svc.keys, auth).create(identity)
    log.info("login", name=identity.name, role=identity.role.value, client=client)
    return _redirect(
        target, cookie_header(session_id, secure=is_secure(request.scope, svc.settings))
    )


@router.post("/logout")
async def logout(request: Request, svc: Svc) -> Response:
    """End this browser's session."""
    auth = authenticator(svc.settings)
    if auth.local_mode:
        return _redirect("/")
    session_id = session_cookie(request.scope)
    if session_id is not None:
        await SessionStore(svc.redis, svc.keys, auth).end(session_id)
        who = request.scope.get(SCOPE_KEY)
        log.info("logout", name=who.name if isinstance(who, Identity) else None)
    secure = is_secure(request.scope, svc.settings)
    return _redirect("/login", cookie_header("", secure=secure, max_age_s=0))


async def _session_identity(svc: Services, request: Request) -> Identity | None:
    session_id = session_cookie(request.scope)
    if session_id is None:
        return None
    return await SessionStore(svc.redis, svc.keys, authenticator(svc.settings)).identity(session_id)
