"""Retry decisions as pure functions: backoff with jitter, and what counts as transient."""

from __future__ import annotations

import random
from collections.abc import Callable

TRANSIENT_GIT_MARKERS = (
    "could not resolve host",
    "connection refused",
    "connection timed out",
    "operation timed out",
    "failed to connect",
    "rpc failed",
    "early eof",
    "the remote end hung up",
    "operation too slow",
    "connection reset",
    "temporary failure",
    "http/2 stream",
    "gnutls_handshake",
    "ssl_read",
)


def backoff_s(
    attempt: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, with
    "equal jitter" (half fixed, half random) so retries spread out but never
    collapse to zero."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return float(ceiling / 2 + rand() * ceiling / 2)


def is_transient_git_error(message: str) -> bool:
    """Whether a git failure looks like the network, not the repository."""
    lowered = message.lower()
    return any(marker in lowered for marker in TRANSIENT_GIT_MARKERS)
