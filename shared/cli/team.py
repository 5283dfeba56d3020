"""``buildq lock|unlock|locks`` and ``buildq claim|release|claims``: team coordination."""

from __future__ import annotations

import re
from typing import Any

import click

from shared.cli import views
from shared.cli.common import api_option, call_api, json_option
from shared.cli.render import Output, print_json
from shared.core.clock import format_ms

DURATION_RE = re.compile(r"^(\d{1,7})([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(value: str) -> int:
    """``90``, ``90s``, ``30m``, ``2h`` or ``1d`` in seconds."""
    match = DURATION_RE.fullmatch(value.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{value!r}: use a positive number with s, m, h or d")
    return int(match.group(1)) * UNIT_S[match.group(2)]


def _owner(f: Any) -> Any:
    # The API takes the owner from the caller's token (or, locally, the uploader's
    # user); --owner is only a check that it is who you think.
    return click.option("--owner", default=None, help="who you are (must match your API identity)")(
        f
    )


@click.command()
@click.argument("service")
@click.option("--ttl", "ttl", help="how long, e.g. 30m, 2h (default: the server's, 1 h)")
@click.option("--reason", default="", help="shown to whoever finds it locked")
@_owner
@api_option
def lock(service: str, ttl: str | None, reason: str, owner: str | None, api_url: str) -> None:
    """Take SERVICE's deploy lock: deploys of it wait until you unlock."""
    ttl_s = parse_duration_s(ttl) if ttl else None
    record = call_api(api_url, "lock", service, owner=owner, ttl_s=ttl_s, reason=reason)
    click.echo(f"locked {service} as {record['owner']} until {format_ms(record['expires_at'])}")


@click.command()
@click.argument("service")
@click.option("--force", is_flag=True, help="release someone else's lock (admins only)")
@_owner
@api_option
def unlock(service: str, force: bool, owner: str | None, api_url: str) -> None:
    """Release SERVICE's lock (yours, or anyone's with --force as an admin)."""
    result = call_api(api_url, "unlock", service, owner=owner, force=force)
    click.echo(f"unlocked {service} (was {result['lock']['owner']}'s)")


@click.command()
@json_option
@api_option
def locks(as_json: bool, api_url: str) -> None:
    """List the locks held now: by deploys and by people.

    Columns: service, owner, fence, until, task, reason."""
    held = call_api(api_url, "locks")
    if as_json:
        print_json(held)
        return
    Output.for_stdout().listing(views.locks_listing(held))


@click.command()
@click.argument("env")
@click.option("--branch", help="what you are testing there")
@click.option("--ttl", "ttl", help="free it automatically after e.g. 4h, 2d")
@_owner
@api_option
def claim(env: str, branch: str | None, ttl: str | None, owner: str | None, api_url: str) -> None:
    """Claim staging environment ENV."""
    ttl_s = parse_duration_s(ttl) if ttl else None
    result = call_api(api_url, "claim", env, owner=owner, branch=branch, ttl_s=ttl_s)
    click.echo(f"claimed {env} as {result['owner']} until {format_ms(result['expires_at'])}")


@click.command()
@click.argument("env")
@click.option("--force", is_flag=True, help="release someone else's claim (admins only)")
@_owner
@api_option
def release(env: str, force: bool, owner: str | None, api_url: str) -> None:
    """Release your claim on staging environment ENV."""
    result = call_api(api_url, "release_claim", env, owner=owner, force=force)
    click.echo(f"released {env} (was {result['claim']['owner']}'s)")


@click.command()
@json_option
@api_option
def claims(as_json: bool, api_url: str) -> None:
    """List who has which staging environment.

    Columns: env, owner, branch, since, until."""
    found = call_api(api_url, "claims")
    if as_json:
        print_json(found)
        return
    Output.for_stdout().listing(views.claims_listing(found))


def register(group: click.Group) -> None:
    """Add the team commands to the ``buildq`` group."""
    for command in (lock, unlock, locks, claim, release, claims):
        group.add_command(command)
