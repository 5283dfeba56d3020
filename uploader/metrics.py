"""``GET /metrics``: fleet-wide Prometheus metrics, read from Redis at scrape time.

Deployers run anywhere, so the uploader reports what Redis knows about all of them:
gauges of queue depths, jobs in flight (what an autoscaler such as KEDA should scale
on), workers, busy slots and heartbeat ages, and whether the fleet is paused; and the
counters and histograms every worker keeps in the stats hash
(:mod:`shared.engine.stats`): ended deployments by status, retries, recoveries, phase
durations and deploy-lock waits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.engine.fleet import read_fleet
from shared.engine.queue import read_counts
from shared.engine.stats import Histogram, Stats, read_inflight, read_stats
from shared.engine.workers import list_workers
from uploader.api import Svc

router = APIRouter()


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.buckets]


class StatsCollector(Collector):
    """The stats hash as one scrape's counter and histogram families."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        ended = CounterMetricFamily(
            "buildq_deployments", "Deployments that ended, by final status", labels=["status"]
        )
        for status, n in sorted(s.deployments.items()):
            ended.add_metric([status], n)
        yield ended
        for name, doc, value in (
            (
                "buildq_dead_letters",
                "Failed deployments given up after max attempts",
                s.dead_letters,
            ),
            ("buildq_retries", "Runs ended by a transient fault and retried later", s.retries),
            (
                "buildq_recoveries",
                "Jobs requeued from workers that died",
                s.recoveries,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        phases = HistogramMetricFamily(
            "buildq_phase_seconds",
            "Time in each phase of ended deployments ('total': submission to end)",
            labels=["phase"],
        )
        for phase, h in s.phases.items():
            phases.add_metric([phase], _buckets(h), sum_value=h.sum_s)
        yield phases
        if s.lock_wait is not None:
            lock = HistogramMetricFamily(
                "buildq_lock_wait_seconds", "Time a job waited for its deploy lock"
            )
            lock.add_metric([], _buckets(s.lock_wait), sum_value=s.lock_wait.sum_s)
            yield lock


@router.get("/metrics", response_class=Response)
async def metrics(svc: Svc) -> Response:
    """Prometheus text format."""
    k = svc.keys
    counts = await read_counts(svc.redis, k)
    workers = await list_workers(svc.redis, k)
    fleet = await read_fleet(svc.redis, k)
    inflight = await read_inflight(svc.redis, k)

    registry = CollectorRegistry()
    registry.register(StatsCollector(await read_stats(svc.redis, k)))
    Gauge(
        "buildq_jobs_inflight",
        "Jobs waiting (both queues, delayed) plus running: the autoscaling signal",
        registry=registry,
    ).set(inflight.total)
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
