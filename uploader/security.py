"""The API's security, installed in one call; each concern is its own module.

- Before routing, as ASGI middleware (``uploader/guard.py``): trusted ``Host`` values
  (``uploader/origin.py``), who is calling (``uploader/access.py``: 401 without a
  valid token, 403 for a viewer's write, before any body is read), no cross-site
  writes, the body cap, and strict JSON parsed once (``uploader/jsonbody.py``).
- After routing, as a FastAPI dependency: ``Caller``, the identity the guard found,
  for the routes that act as the caller.
- In the submit path shared by ``POST /deployments`` and chat ``deploy``
  (``uploader/submit.py``): the repository host lists, the role and service check
  and the per-identity rate limit (429 with Retry-After).
"""

from __future__ import annotations

from fastapi import FastAPI

from shared.core.errors import ConfigError
from shared.core.settings import Settings
from uploader.access import Gatekeeper
from uploader.auth import parse_chat_users
from uploader.clone import clone_settings
from uploader.guard import RequestGuard
from uploader.origin import OriginPolicy
from uploader.refused import install_refusal_handler


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the guard and the refusal handler; malformed security settings stop
    start-up (ConfigError)."""
    try:
        clone_settings(settings)
    except ValueError as exc:
        raise ConfigError(f"BUILDQ_GIT_TOKENS: {exc}") from None
    gatekeeper = Gatekeeper(settings)  # parses BUILDQ_API_TOKENS: ConfigError when malformed
    parse_chat_users(settings.chat_users)
    install_refusal_handler(app)
    origins = OriginPolicy.of(settings, local_mode=gatekeeper.local_mode)
    app.add_middleware(RequestGuard, settings=settings, origins=origins, gatekeeper=gatekeeper)
