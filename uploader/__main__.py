"""``python -m uploader``: run the HTTP API (and the ingest stage) under uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from shared.errors import ConfigError
from shared.logsetup import configure_logging
from shared.settings import get_settings
from uploader.app import create_app


def main() -> None:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"buildq uploader: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.grace_period_s) + 5,
    )


if __name__ == "__main__":
    main()
