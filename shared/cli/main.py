"""The ``buildq`` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shared import __version__
from shared.cli import views
from shared.cli.client import ApiError, Client
from shared.cli.common import api_option, call_api, json_option
from shared.cli.progress import JsonProgress, LiveProgress, PlainProgress, Progress, follow
from shared.cli.render import Output, print_json, stdout_is_terminal
from shared.core.errors import BuildqError, ConfigError
from shared.core.settings import load_settings

TERMINAL_STATUSES = {"live", "failed", "cancelled", "superseded"}


def _settings_or_exit() -> Any:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(__version__, prog_name="buildq")
def main() -> None:
    """buildq: a self-hosted build-and-deploy queue on Redis and S3."""


@main.command()
@click.option("--deployers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--sites-port",
    type=click.IntRange(1, 65535),
    help="where sites are served: http://<service>.localhost:PORT/ [default: --port + 1]",
)
@click.option("--demo", is_flag=True, help="deploy the bundled demo site once the stack is up")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="BUILDQ_DATA_DIR",
    default=".buildq",
    show_default=True,
    help="where the AOF, logs and work files go",
)
def up(deployers: int, port: int, sites_port: int | None, demo: bool, data_dir: Path) -> None:
    """Run the whole stack (embedded valkey + S3 when none is configured)."""
    from shared.cli.stack import Stack

    _settings_or_exit()
    started = time.monotonic()
    stack = Stack(
        data_dir=data_dir, port=port, sites_port=sites_port or port + 1, deployers=deployers
    )
    stack.install_signal_handlers()
    code = 0
    try:
        stack.start(say=click.echo)
        click.echo(f"dashboard       {stack.api_url}/")
        if demo and not stack.stop_requested:
            code = _run_demo(stack, started)
        click.echo("buildq is up; press Ctrl-C to stop.")
        stack.wait()
    except (BuildqError, OSError) as exc:
        click.echo(f"buildq up: {exc}", err=True)
        code = 1
    finally:
        click.echo("stopping...")
        stack.stop()
        click.echo("stopped.")
    sys.exit(code)


def _run_demo(stack: Any, started: float) -> int:
    from shared.cli.demo_repo import make_demo_repo

    repo = make_demo_repo((stack.data_dir / "demo-site").resolve())
    client = Client(stack.api_url)
    try:
        accepted = client.submit(f"file://{repo}", service="demo")
        click.echo(f"demo: deploying file://{repo} as job {accepted['id']}")
        code = _follow(client, accepted["id"], PlainProgress(show_lines=False))
    finally:
        client.close()
    if code == 0:
        click.echo(f"demo: live {time.monotonic() - started:.1f}s after start")
    return code


def _follow(client: Client, job_id: str, view: Progress) -> int:
    """Show ``job_id`` in ``view`` until it ends; its exit code."""
    with view:
        follow(client.follow(job_id), view)
        return view.finish(client.job(job_id))


def _deploy_view(as_json: bool) -> Progress:
    if as_json:
        return JsonProgress()
    if stdout_is_terminal():
        return LiveProgress(Console(highlight=False))
    return PlainProgress()


@main.command()
@click.argument("repo_url")
@click.option("--service", help="service name (default: from the repository name)")
@click.option("--ref", help="branch or tag (default: the repository's default branch)")
@click.option("--root", "root_dir", help="directory inside the repository to build")
@click.option("--json", "as_json", is_flag=True, help="print only the final job record as JSON")
@api_option
def deploy(
    repo_url: str,
    *,
    service: str | None,
    ref: str | None,
    root_dir: str | None,
    as_json: bool,
    api_url: str,
) -> None:
    """Deploy REPO_URL, follow its phases and build log, print the live URL.

    On a terminal a live line shows the phase and the time since submission; in a
    pipe each phase change is one line (``==> PHASE (ELAPSED)``) and log lines are
    indented. Exit code 0 when live, 1 with the error on failure or cancellation."""
    client = Client(api_url)
    view = _deploy_view(as_json)
    job_id = None
    try:
        accepted = client.submit(repo_url, service=service, ref=ref, root_dir=root_dir)
        job_id = accepted["id"]
        if not as_json:
            click.echo(f"job {job_id} accepted (service {accepted['service']})")
        code = _follow(client, job_id, view)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        if job_id is None:
            raise
        click.echo(f"stopped following; job {job_id} goes on (buildq cancel {job_id})", err=True)
        code = 130
    finally:
        client.close()
    sys.exit(code)


@main.command()
@click.argument("job_id", required=False)
@json_option
@api_option
def status(job_id: str | None, as_json: bool, api_url: str) -> None:
    """Show the 20 most recent jobs, or one job's fields and phase timings.

    Columns: id, status, service, created, repository; for one job, field and value
    rows (a queued job's position, 1 = next, and eta_s after its status), then phase
    rows (phase, started, duration ms)."""
    if job_id:
        job = call_api(api_url, "job", job_id)
        if as_json:
            print_json(job)
            return
        out = Output.for_stdout()
        for listing in views.job_listings(job):
            out.listing(listing)
        return
    jobs = call_api(api_url, "jobs", limit=20)
    if as_json:
        print_json(jobs)
        return
    Output.for_stdout().listing(views.jobs_listing(jobs))


@main.command()
@json_option
@api_option
def queue(as_json: bool, api_url: str) -> None:
    """Show the queue: pending jobs, workers with heartbeat age, active jobs.

    A summary line, then pending rows (job) and worker rows (worker, kind, busy,
    heartbeat ms, active)."""
    q = call_api(api_url, "queue")
    if as_json:
        print_json(q)
        return
    out = Output.for_stdout()
    out.line(views.queue_summary(q))
    for listing in views.queue_listings(q):
        out.listing(listing)


@main.command()
@click.argument("job_id")
@api_option
def cancel(job_id: str, api_url: str) -> None:
    """Cancel a queued job, or stop its running build."""
    result = call_api(api_url, "cancel", job_id)
    click.echo(f"{job_id} cancelled (was {result['was']})")


@main.command()
@click.argument("job_id")
@api_option
def retry(job_id: str, api_url: str) -> None:
    """Run a failed, dead-lettered or cancelled job again."""
    result = call_api(api_url, "retry", job_id)
    click.echo(f"{job_id} {result['status']} again")


@main.command()
@click.option("--max-concurrency", type=click.IntRange(1), help="also cap concurrent builds")
@api_option
def pause(max_concurrency: int | None, api_url: str) -> None:
    """Pause deployers: running builds finish, nothing new starts."""
    changes: dict[str, Any] = {"paused": True}
    if max_concurrency:
        changes["max_concurrency"] = max_concurrency
    state = call_api(api_url, "fleet", **changes)
    click.echo(f"fleet paused (max_concurrency {state['max_concurrency']})")


@main.command()
@click.option("--max-concurrency", type=click.IntRange(1), help="cap concurrent builds")
@click.option("--no-limit", is_flag=True, help="lift the concurrency cap")
@api_option
def resume(max_concurrency: int | None, no_limit: bool, api_url: str) -> None:
    """Resume deployers (optionally changing the fleet-wide concurrency cap)."""
    changes: dict[str, Any] = {"paused": False}
    if no_limit:
        changes["max_concurrency"] = None
    elif max_concurrency:
        changes["max_concurrency"] = max_concurrency
    state = call_api(api_url, "fleet", **changes)
    click.echo(f"fleet running (max_concurrency {state['max_concurrency']})")


@main.command()
@click.option("--fix", is_flag=True, help="repair what recovery would repair")
@click.option(
    "--recover",
    is_flag=True,
    help="after Redis lost data: restore aliases, counters and unfinished jobs from S3",
)
@click.option("--json", "as_json", is_flag=True, help="with --recover: print counts as JSON")
def doctor(fix: bool, recover: bool, as_json: bool) -> None:
    """Check that every job sits in exactly one queue (talks to Redis directly) and
    say which build resource limits this host enforces.

    Columns: result (FOUND or fixed), problem, job, detail; then a count line.
    With --recover (shared/cli/recover.py), rebuild from S3 instead."""
    import anyio

    if recover:
        from shared.cli.recover import recover_command

        recover_command(_settings_or_exit(), as_json=as_json)
        return

    from shared.cli.doctor import Doctor, build_limits
    from shared.redis.client import make_redis
    from shared.redis.eviction import SAFE_POLICY, eviction_policy, refusal
    from shared.redis.keys import Keys

    settings = _settings_or_exit()
    click.echo(build_limits(settings))

    async def run() -> tuple[str | None, list[Any]]:
        redis = make_redis(settings)
        try:
            policy = await eviction_policy(redis)
            return policy, await Doctor(redis, Keys(settings.namespace), settings).check(fix=fix)
        finally:
            await redis.aclose()

    policy, findings = anyio.run(run)
    if policy is None:
        click.echo("redis maxmemory-policy: unknown (the server did not say)")
    elif policy == SAFE_POLICY:
        click.echo(f"redis maxmemory-policy: {policy}")
    else:
        click.echo(f"redis maxmemory-policy: {policy} - WARNING: {refusal(policy)}")
    out = Output.for_stdout()
    out.listing(views.findings_listing(findings))
    unfixed = [f for f in findings if not f.fixed]
    out.line(f"{len(findings)} problem(s), {len(unfixed)} left")
    evicting = policy is not None and policy != SAFE_POLICY
    sys.exit(1 if unfixed or evicting else 0)


def _exec_module(module: str, overrides: dict[str, str]) -> None:
    env = {**os.environ, **overrides}
    os.execve(sys.executable, [sys.executable, "-m", module], env)  # noqa: S606 - our own module


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="listen port (BUILDQ_PORT)")
def uploader(port: int | None) -> None:
    """Run the uploader API and ingest stage in the foreground."""
    _exec_module("uploader", {"BUILDQ_PORT": str(port)} if port else {})


@main.command()
@click.option(
    "--slots", type=click.IntRange(1, 256), help="concurrent jobs (BUILDQ_DEPLOYER_SLOTS)"
)
def deployer(slots: int | None) -> None:
    """Run one deployer process in the foreground."""
    _exec_module("deployer", {"BUILDQ_DEPLOYER_SLOTS": str(slots)} if slots else {})


from shared.cli.team import register as _register_team  # noqa: E402 - after main

_register_team(main)

from shared.cli.gc import gc as _gc  # noqa: E402 - after main

main.add_command(_gc)

from shared.cli.services import register as _register_services  # noqa: E402 - after main

_register_services(main)


if __name__ == "__main__":
    main()
