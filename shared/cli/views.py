"""What each read command shows of the API's answer: its columns and rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from shared.cli.render import Listing
from shared.core.clock import format_ms

if TYPE_CHECKING:
    from shared.cli.doctor import Finding

# ``buildq status ID``: the record's fields worth a glance, in this order (--json has all).
JOB_FIELDS = (
    "id",
    "status",
    "service",
    "repo_url",
    "ref",
    "root_dir",
    "commit",
    "url",
    "error",
    "attempts",
    "worker",
    "dead",
)
JOB_TIMES = ("created_at", "updated_at", "ended_at")
# Shown after ``status`` while the job waits in a queue: place in line (1 = next) and
# the estimated seconds until it is live.
WAITING_FIELDS = ("position", "eta_s")


def jobs_listing(jobs: Iterable[Mapping[str, Any]]) -> Listing:
    """``buildq status``: recent jobs, newest first."""
    rows = [
        (j["id"], j["status"], j["service"], format_ms(j["created_at"]), j["repo_url"])
        for j in jobs
    ]
    return Listing(
        ("id", "status", "service", "created", "repository"), rows, empty="no deployments yet"
    )


def job_listings(job: Mapping[str, Any]) -> list[Listing]:
    """``buildq status ID``: one job's fields, then its phases with their durations."""
    fields = [(name, job.get(name)) for name in JOB_FIELDS]
    waiting = [(name, job[name]) for name in WAITING_FIELDS if job.get(name) is not None]
    fields[2:2] = waiting
    fields += [(name, format_ms(job[name], never="-")) for name in JOB_TIMES if job.get(name)]
    phases = [
        (name, format_ms(p["start"]), p.get("duration_ms"))
        for name, p in (job.get("phases") or {}).items()
    ]
    return [
        Listing(("field", "value"), fields),
        Listing(("phase", "started", "duration ms"), phases, title="phases", kind="phase"),
    ]


def queue_summary(q: Mapping[str, Any]) -> str:
    """``buildq queue``'s first line: how many jobs wait where, and the pause switch."""
    paused = "yes" if q["paused"] else "no"
    return (
        f"queue {q['length']}  ingest {q['ingest']}  delayed {q['delayed']}  dead {q['dead']}"
        f"  paused {paused}"
    )


def queue_listings(q: Mapping[str, Any]) -> list[Listing]:
    """``buildq queue``: the pending ids (the API lists up to 100), then the workers."""
    pending: list[str] = q["pending"]
    title = "pending" if len(pending) >= q["length"] else f"pending (first {len(pending)})"
    workers = [
        (
            w["id"],
            w["kind"],
            f"{w['busy']}/{w['slots']}",
            w["heartbeat_age_ms"],
            ",".join(q["active"].get(w["id"], [])),
        )
        for w in q["workers"]
    ]
    return [
        Listing(("job",), [(job_id,) for job_id in pending], title=title, kind="pending"),
        Listing(
            ("worker", "kind", "busy", "heartbeat ms", "active"),
            workers,
            title="workers",
            kind="worker",
            empty="no workers",
        ),
    ]


def locks_listing(locks: Iterable[Mapping[str, Any]]) -> Listing:
    """``buildq locks``: locks held now, by deploys and by people."""
    rows = [
        (
            r["service"],
            r["owner"],
            r["fence"],
            format_ms(r.get("expires_at")),
            r.get("task"),
            r.get("reason"),
        )
        for r in locks
    ]
    return Listing(
        ("service", "owner", "fence", "until", "task", "reason"), rows, empty="no locks held"
    )


def claims_listing(claims: Iterable[Mapping[str, Any]]) -> Listing:
    """``buildq claims``: who has which staging environment."""
    rows = [
        (
            c["env"],
            c["owner"],
            c.get("branch"),
            format_ms(c["claimed_at"]),
            format_ms(c.get("expires_at")),
        )
        for c in claims
    ]
    return Listing(
        ("env", "owner", "branch", "since", "until"), rows, empty="no environment is claimed"
    )


def findings_listing(findings: Iterable[Finding]) -> Listing:
    """``buildq doctor``: each broken invariant, and whether ``--fix`` repaired it."""
    rows = [("fixed" if f.fixed else "FOUND", f.problem, f.job_id, f.detail) for f in findings]
    return Listing(("result", "problem", "job", "detail"), rows)
