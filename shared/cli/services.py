"""``buildq services``, ``buildq service set|show`` and ``buildq rollback``: services
as records, and going back to an earlier deployment."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import click

from shared.cli.client import ApiError, Client
from shared.cli.common import api_option, json_option
from shared.cli.render import Listing, Output, print_json
from shared.core.clock import format_ms


class ServicesClient(Client):
    """The service routes of the uploader API."""

    def services(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/services")
        return result

    def service(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/services/{quote(name, safe='')}")
        return result

    def put_service(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        path = f"/services/{quote(name, safe='')}"
        result: dict[str, Any] = self._call("PUT", path, json=dict(body))
        return result

    def rollback(self, name: str, to: str | None) -> dict[str, Any]:
        path = f"/services/{quote(name, safe='')}/rollback"
        body = {"to": to} if to else {}
        result: dict[str, Any] = self._call("POST", path, json=body)
        return result


def _call(api_url: str, method: str, *args: Any) -> Any:
    client = ServicesClient(api_url)
    try:
        return getattr(client, method)(*args)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def services_listing(services: Iterable[Mapping[str, Any]]) -> Listing:
    """``buildq services``: every registered service."""
    rows = [
        (
            s["name"],
            s["repo_url"],
            s["production_branch"],
            ",".join(s.get("preview_branches") or []),
            s.get("webhook_secret_set"),
            s.get("url"),
        )
        for s in services
    ]
    columns = ("service", "repository", "branch", "previews", "webhook", "url")
    return Listing(columns, rows, empty="no services registered")


def service_listings(service: Mapping[str, Any]) -> list[Listing]:
    """``buildq service show``: the record, then the last deployments."""
    build = service.get("build") or {}
    live = service.get("live") or {}
    fields = [
        ("name", service["name"]),
        ("repository", service["repo_url"]),
        ("production branch", service["production_branch"]),
        ("preview branches", ",".join(service.get("preview_branches") or [])),
        ("build command", build.get("command")),
        ("build output", build.get("output")),
        ("root dir", build.get("root_dir")),
        ("webhook secret", service.get("webhook_secret_set")),
        ("url", service.get("url")),
        ("live", live.get("id")),
        ("rolled back from", live.get("from") if live.get("rollback") else None),
        ("updated", format_ms(service.get("updated_at"), never="-")),
        ("updated by", service.get("updated_by")),
    ]
    rows = [
        (
            j["id"],
            j["status"],
            j.get("ref"),
            (j.get("commit") or "")[:12],
            format_ms(j["created_at"]),
        )
        for j in service.get("deployments") or []
    ]
    return [
        Listing(("field", "value"), fields),
        Listing(
            ("id", "status", "ref", "commit", "created"),
            rows,
            title="deployments",
            kind="deployment",
            empty="no deployments yet",
        ),
    ]


@click.command("services")
@json_option
@api_option
def services(as_json: bool, api_url: str) -> None:
    """List registered services.

    Columns: service, repository, branch, previews, webhook, url."""
    found = _call(api_url, "services")
    if as_json:
        print_json(found)
        return
    Output.for_stdout().listing(services_listing(found))


@click.group("service")
def service() -> None:
    """Register, change and show one service."""


@service.command("set")
@click.argument("name")
@click.option("--repo", "repo_url", help="repository URL (required for a new service)")
@click.option("--branch", "production_branch", help="the branch that deploys to production")
@click.option("--command", "command", help="build command")
@click.option("--output", "output", help="directory the build writes, to publish")
@click.option("--root", "root_dir", help="directory of the app inside the repository")
@click.option("--preview", "previews", multiple=True, help="branch glob that gets previews")
@click.option(
    "--webhook-secret-stdin", is_flag=True, help="read the webhook secret from stdin (never argv)"
)
@json_option
@api_option
def service_set(
    name: str, webhook_secret_stdin: bool, as_json: bool, api_url: str, **given: Any
) -> None:
    """Create or change service NAME; options not given keep their value."""
    current: dict[str, Any] = {}
    try:
        client = ServicesClient(api_url)
        try:
            current = client.service(name)
        finally:
            client.close()
    except ApiError as exc:
        if not str(exc).startswith("404"):
            raise click.ClickException(str(exc)) from None
    body = merged_body(current, given)
    if webhook_secret_stdin:
        body["webhook_secret"] = sys.stdin.read().strip()
    stored = _call(api_url, "put_service", name, body)
    if as_json:
        print_json(stored)
        return
    click.echo(f"{'updated' if current else 'registered'} {stored['name']}: {stored['repo_url']}")


def merged_body(current: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body: the current record with the options given laid over it."""
    repo = given.get("repo_url") or current.get("repo_url")
    if not repo:
        raise click.UsageError("a new service needs --repo URL")
    build = {k: v for k, v in (current.get("build") or {}).items() if v is not None}
    build.update(
        {k: given[k] for k in ("command", "output", "root_dir") if given.get(k) is not None}
    )
    branch = given.get("production_branch") or current.get("production_branch") or "main"
    body: dict[str, Any] = {"repo_url": repo, "production_branch": branch, "build": build}
    preview_branches = list(given.get("previews") or ()) or current.get("preview_branches")
    if preview_branches is not None:
        body["preview_branches"] = preview_branches
    return body


@service.command("show")
@click.argument("name")
@json_option
@api_option
def service_show(name: str, as_json: bool, api_url: str) -> None:
    """Show service NAME, its live deployment and its last deployments."""
    found = _call(api_url, "service", name)
    if as_json:
        print_json(found)
        return
    out = Output.for_stdout()
    for listing in service_listings(found):
        out.listing(listing)


@click.command("rollback")
@click.argument("name")
@click.argument("deployment", required=False)
@json_option
@api_option
def rollback(name: str, deployment: str | None, as_json: bool, api_url: str) -> None:
    """Serve an earlier deployment of service NAME again, at once (no build).

    DEPLOYMENT defaults to the one live before the current one; it must be of
    NAME and still published (BUILDQ_KEEP_DEPLOYMENTS keeps the newest)."""
    done = _call(api_url, "rollback", name, deployment)
    if as_json:
        print_json(done)
        return
    click.echo(
        f"{done['service']} now serves {done['id']} (seq {done['seq']}, was "
        f"{done.get('previous') or 'nothing'}): {done['url']}"
    )


def register(group: click.Group) -> None:
    """Add the service commands to the ``buildq`` group."""
    group.add_command(services)
    group.add_command(service)
    group.add_command(rollback)
