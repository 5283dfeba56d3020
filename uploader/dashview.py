"""The dashboard's HTML: pure functions from plain data to markup.

Every value that reaches the page passes through :func:`esc` (text and attribute
values alike): repository URLs, lock reasons, claim branches and owner names are
typed by users and are hostile. Links are only ever buildq's own addresses (the API's
paths, and site addresses built from validated names), never a URL a user typed. No
inline script or style: the page loads ``/ui/static/dashboard.js`` and ``.css``
under a Content-Security-Policy that allows only this origin.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.core.clock import format_ms
from shared.engine.jobs import PHASES, JobRecord

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def esc(value: object) -> str:
    """A value as HTML text or a quoted attribute value; ``-`` for nothing."""
    if value is None or value == "":
        return "-"
    return html.escape(str(value), quote=True)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A job in a stage's queue."""

    id: str
    queue: str  # "build" or "ingest"
    position: int
    service: str | None
    status: str | None


@dataclass(frozen=True, slots=True)
class Recent:
    """A recent deployment with its links."""

    record: JobRecord
    site: str
    preview: str


@dataclass(frozen=True, slots=True)
class Dashboard:
    """Everything the dashboard panels show, read at one moment."""

    paused: bool
    counts: Mapping[str, int]
    waiting: Sequence[Waiting]
    workers: Sequence[Mapping[str, Any]]
    active: Mapping[str, Sequence[str]]
    recent: Sequence[Recent]
    locks: Sequence[Mapping[str, Any]]
    claims: Sequence[Mapping[str, Any]]
    now_ms: int = 0
    notes: Sequence[str] = field(default_factory=tuple)


def page(title: str, body: str, **data: str) -> str:
    """A whole page: ``data`` becomes ``data-*`` attributes of ``<body>`` (the script
    reads them; no inline script)."""
    attrs = "".join(f' data-{esc(k.replace("_", "-"))}="{esc(v)}"' for k, v in data.items())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/ui/static/dashboard.css">'
        '<script src="/ui/static/dashboard.js" defer></script>'
        f"</head><body{attrs}>"
        '<header><a href="/" class="brand">buildq</a>'
        '<span id="live" class="live">connecting</span></header>'
        f"<main>{body}</main></body></html>"
    )


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str, cls: str = ""
) -> str:
    """A table of already-escaped cells; ``empty`` (plain text) when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def job_link(job_id: str) -> str:
    return f'<a href="/ui/deployments/{esc(job_id)}">{esc(job_id)}</a>'


def status_badge(status: object) -> str:
    return f'<span class="status status-{esc(status)}">{esc(status)}</span>'


def phase_times(record: JobRecord) -> str:
    """``cloning 1.2s · building 3.4s …`` for the phases that have a duration."""
    parts = []
    for phase in PHASES:
        timing = record.phases.get(phase.value)
        if timing is not None and timing.duration_ms is not None:
            parts.append(f"{esc(phase.value)} {timing.duration_ms / 1000:.1f}s")
    return " · ".join(parts) or "-"


def age(now_ms: int, at_ms: int | None) -> str:
    return "-" if at_ms is None else f"{max(0, now_ms - at_ms) / 1000:.0f}s ago"


def queue_panel(d: Dashboard) -> str:
    counts = " ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in d.counts.items())
    paused = '<b class="paused">fleet paused</b>' if d.paused else ""
    rows = [
        (esc(w.position), job_link(w.id), esc(w.service), esc(w.queue), status_badge(w.status))
        for w in d.waiting
    ]
    listing = table(
        ("#", "job", "service", "queue", "status"),
        rows,
        empty="nothing is waiting",
        cls="queue",
    )
    return f'<section id="queue"><h2>Queue</h2><p>{counts} {paused}</p>{listing}</section>'


def workers_panel(d: Dashboard) -> str:
    rows = [
        (
            esc(w["id"]),
            esc(w.get("kind")),
            f"{esc(w.get('busy'))}/{esc(w.get('slots'))}",
            f"{int(w.get('heartbeat_age_ms') or 0) / 1000:.1f}s",
            " ".join(job_link(j) for j in d.active.get(str(w["id"]), ())) or "-",
        )
        for w in d.workers
    ]
    listing = table(
        ("worker", "kind", "busy", "heartbeat", "current job"), rows, empty="no workers"
    )
    return f'<section id="workers"><h2>Workers</h2>{listing}</section>'


def recent_panel(d: Dashboard) -> str:
    rows = [
        (
            job_link(r.record.id),
            status_badge(r.record.status.value),
            esc(r.record.service),
            f"<code>{esc((r.record.commit or '')[:12])}</code>",
            phase_times(r.record),
            age(d.now_ms, r.record.created_at),
            f'<a href="{esc(r.site)}">live site</a> · <a href="{esc(r.preview)}">preview</a>',
        )
        for r in d.recent
    ]
    listing = table(
        ("job", "status", "service", "commit", "phases", "created", "links"),
        rows,
        empty="no deployments yet",
        cls="recent",
    )
    return f'<section id="recent"><h2>Recent deployments</h2>{listing}</section>'


def locks_panel(d: Dashboard) -> str:
    rows = [
        (
            esc(lock.get("service")),
            esc(lock.get("owner")),
            esc(lock.get("reason")),
            esc(format_ms(lock.get("expires_at"))),
        )
        for lock in d.locks
    ]
    listing = table(("service", "holder", "reason", "expires"), rows, empty="no locks held")
    return f'<section id="locks"><h2>Locks</h2>{listing}</section>'


def claims_panel(d: Dashboard) -> str:
    rows = [
        (
            esc(c.get("env")),
            esc(c.get("owner")),
            esc(c.get("branch")),
            esc(format_ms(c.get("claimed_at"))),
            esc(format_ms(c.get("expires_at"))),
        )
        for c in d.claims
    ]
    listing = table(
        ("environment", "owner", "branch", "since", "until"),
        rows,
        empty="no environment is claimed",
    )
    return f'<section id="claims"><h2>Staging claims</h2>{listing}</section>'


def panels(d: Dashboard) -> str:
    """The dashboard's live part (``GET /ui/panels``, swapped in by the script)."""
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in d.notes)
    return notes + "".join(
        panel(d) for panel in (queue_panel, workers_panel, recent_panel, locks_panel, claims_panel)
    )


def dashboard_page(d: Dashboard, events_after: str) -> str:
    """``GET /``: the panels, live from ``/events`` after ``events_after``."""
    body = f'<div id="panels">{panels(d)}</div>'
    return page("buildq", body, view="dashboard", events_after=events_after)


def summary(record: JobRecord, place: Mapping[str, Any], site: str, preview: str) -> str:
    """A deployment's fields and phases (``GET /ui/deployments/{id}/summary``)."""
    fields = [
        ("status", status_badge(record.status.value)),
        ("service", esc(record.service)),
        ("repository", esc(record.repo_url)),
        ("ref", esc(record.ref)),
        ("commit", f"<code>{esc(record.commit)}</code>"),
        ("position", esc(place.get("position"))),
        ("eta", esc(None if place.get("eta_s") is None else f"{place['eta_s']}s")),
        ("attempts", esc(record.attempts)),
        ("worker", esc(record.worker)),
        ("error", esc(record.error)),
        ("links", f'<a href="{esc(site)}">live site</a> · <a href="{esc(preview)}">preview</a>'),
    ]
    info = table(("field", "value"), ((esc(k), v) for k, v in fields), empty="", cls="fields")
    phases = table(
        ("phase", "started", "duration"),
        (
            (
                esc(name),
                esc(format_ms(p.start)),
                esc(None if p.duration_ms is None else f"{p.duration_ms} ms"),
            )
            for name, p in record.phases.items()
        ),
        empty="no phase yet",
    )
    return info + phases


def deployment_page(
    record: JobRecord, summary_html: str, *, may_cancel: bool, may_retry: bool
) -> str:
    """``GET /ui/deployments/{id}``: the summary, the buttons, the live build log."""
    buttons = ""
    if may_cancel:
        buttons += '<button type="button" data-action="cancel">Cancel</button>'
    if may_retry:
        buttons += '<button type="button" data-action="retry">Retry</button>'
    body = (
        f"<h1>Deployment {esc(record.id)}</h1>"
        f'<div id="summary">{summary_html}</div>'
        f'<p class="actions">{buttons}<span id="message" role="status"></span></p>'
        '<h2>Build log</h2><pre id="log"></pre>'
    )
    return page(f"buildq · {record.id}", body, view="deployment", job=record.id)
