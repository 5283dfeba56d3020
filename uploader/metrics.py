"""``GET /metrics``: fleet-wide Prometheus gauges, read from Redis at scrape time.

Deployers run anywhere, so the uploader reports what Redis knows about all of them:
queue depths (what an autoscaler such as KEDA scales on), workers, busy slots and
heartbeat ages, and whether the fleet is paused.
"""

from __future__ import annotations

from collections import defaultdict

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared.engine.fleet import read_fleet
from shared.engine.queue import read_counts
from shared.engine.workers import list_workers
from uploader.api import Svc

router = APIRouter()


@router.get("/metrics", response_class=Response)
async def metrics(svc: Svc) -> Response:
    """Prometheus text format."""
    k = svc.keys
    counts = await read_counts(svc.redis, k)
    workers = await list_workers(svc.redis, k)
    fleet = await read_fleet(svc.redis, k)

    registry = CollectorRegistry()
    depth = Gauge("buildq_queue_length", "Jobs waiting, by list", ["queue"], registry=registry)
    for name, value in (
        ("ingest", counts.ingest),
        ("build", counts.build),
        ("delayed", counts.delayed),
        ("dead", counts.dead),
    ):
        depth.labels(name).set(value)
    count = Gauge("buildq_workers", "Registered workers", ["kind"], registry=registry)
    slots = Gauge("buildq_worker_slots", "Job slots", ["kind"], registry=registry)
    busy = Gauge("buildq_worker_busy_slots", "Slots running a job", ["kind"], registry=registry)
    age = Gauge(
        "buildq_worker_heartbeat_age_seconds_max", "Oldest heartbeat", ["kind"], registry=registry
    )
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for w in workers:
        row = by_kind[w.kind]
        row[0] += 1
        row[1] += w.slots
        row[2] += w.busy
        row[3] = max(row[3], w.heartbeat_age_ms)
    for kind, (n, total, running, oldest_ms) in by_kind.items():
        count.labels(kind).set(n)
        slots.labels(kind).set(total)
        busy.labels(kind).set(running)
        age.labels(kind).set(oldest_ms / 1000)
    Gauge("buildq_fleet_paused", "1 while deployers are paused", registry=registry).set(
        1 if fleet.paused else 0
    )
    cap = Gauge("buildq_fleet_max_concurrency", "Fleet-wide cap (0: none)", registry=registry)
    cap.set(fleet.max_concurrency or 0)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
