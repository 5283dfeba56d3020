"""``python -m uploader``: the HTTP API (and the ingest stage) and the sites origin,
one uvicorn server on two listeners (``BUILDQ_PORT`` and ``BUILDQ_SITES_PORT``)."""

from __future__ import annotations

import socket
import sys

import uvicorn

from shared.core.errors import ConfigError
from shared.core.logsetup import configure_logging, secret_values
from shared.core.settings import Settings, get_settings
from shared.redis.eviction import check_at_start
from uploader.app import create_app
from uploader.auth import check_local_bind, parse_tokens


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening socket on ``host:port``; ConfigError naming ``what`` if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted connections inherit it, and asyncio turns Nagle's
    # algorithm off (TCP_NODELAY) only on sockets whose proto says TCP. Without it a
    # response written as headers then body waited for the client's delayed ACK:
    # every request after the first on a keep-alive connection took 40+ ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main() -> None:
    try:
        settings: Settings = get_settings()
        tokens = settings.api_tokens.get_secret_value() if settings.api_tokens else None
        check_local_bind(settings.host, parse_tokens(tokens))
        app = create_app(settings)
        sockets = [
            listen(settings.host, settings.port, "the API (BUILDQ_PORT)"),
            listen(settings.host, settings.sites_port, "sites (BUILDQ_SITES_PORT)"),
        ]
    except ConfigError as exc:
        print(f"buildq uploader: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, json=settings.log_json, secrets=secret_values(settings))
    try:
        check_at_start(settings, process="uploader")  # before the app touches Redis or S3
    except ConfigError as exc:
        print(f"buildq uploader: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.grace_period_s) + 5,
    )
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    main()
