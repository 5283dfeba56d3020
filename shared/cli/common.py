"""What every ``buildq`` command that talks to the API shares."""

from __future__ import annotations

from typing import Any

import click

from shared.cli.client import ApiError, Client


def api_option(f: Any) -> Any:
    """``--api URL`` (default ``BUILDQ_API_URL`` or the local uploader)."""
    return click.option(
        "--api",
        "api_url",
        envvar="BUILDQ_API_URL",
        default="http://127.0.0.1:8000",
        show_default=True,
        help="uploader API base URL",
    )(f)


def json_option(f: Any) -> Any:
    """``--json``: print the API's JSON answer as is, for scripts."""
    return click.option(
        "--json", "as_json", is_flag=True, help="print the API's JSON as is (for scripts)"
    )(f)


def call_api(api_url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``Client.<method>``; an API error becomes a clean CLI error (exit 1)."""
    client = Client(api_url)
    try:
        return getattr(client, method)(*args, **kwargs)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
