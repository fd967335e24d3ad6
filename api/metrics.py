"""Prometheus metrics: HTTP requests (this process) + queue depths and task stats (shared, read from Redis) +
disk used by uploads, features, results and preview strips (a directory walk, at most once per 10 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from videotag.core.settings import Settings, get_settings
from workers.celery_app import queue_depths
from workers.jobstore import DURATION_BUCKETS, JobStore
from workers.retention import DiskUsageCache

DISK_CACHE_S = 10.0


class RedisCollector(Collector):
    """Scrape-time view of what the workers recorded in `vt:metrics` and of the broker queues."""

    def __init__(self, jobstore: JobStore, settings: Settings | None = None) -> None:
        self.jobstore = jobstore
        self.disk = DiskUsageCache(settings or get_settings(), ttl_s=DISK_CACHE_S)

    def collect(self) -> Iterator:
        try:
            used = self.disk.get()
        except OSError:  # an unreadable data directory must not break the scrape
            used = {}
        d = GaugeMetricFamily("videotag_disk_bytes", f"Bytes on disk by kind of data (computed at most every "
                              f"{DISK_CACHE_S:g} s)", labels=["kind"])  # fmt: skip
        for kind, n in used.items():
            d.add_metric([kind], n)
        yield d
        try:
            depths = queue_depths(self.jobstore.r)
            m = self.jobstore.metrics()
            counts = self.jobstore.counts()
        except Exception:  # noqa: BLE001 - Redis down: export what we have (nothing) and let readyz say why
            up = GaugeMetricFamily("videotag_redis_up", "1 if the job store answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("videotag_redis_up", "1 if the job store answered this scrape")
        up.add_metric([], 1)
        yield up
        q = GaugeMetricFamily("videotag_queue_depth", "Messages waiting in a broker queue", labels=["queue"])
        for name, n in depths.items():
            q.add_metric([name], n)
        yield q
        a = GaugeMetricFamily("videotag_active", "Unfinished jobs / batches", labels=["what"])
        a.add_metric(["jobs"], counts["active_jobs"])
        a.add_metric(["batches"], counts["active_batches"])
        yield a
        h = HistogramMetricFamily("videotag_task_duration_seconds", "Task run time", labels=["task"])
        f = CounterMetricFamily("videotag_task_failures", "Failed task runs by code", labels=["task", "code"])
        for task in ("extract", "predict"):
            buckets = [(str(le), m.get(f"{task}:le:{le}", 0.0)) for le in DURATION_BUCKETS]
            buckets.append(("+Inf", m.get(f"{task}:count", 0.0)))
            h.add_metric([task], buckets, sum_value=m.get(f"{task}:sum", 0.0))
            prefix = f"{task}:fail:"
            for key, v in m.items():
                if key.startswith(prefix):
                    f.add_metric([task, key[len(prefix) :]], v)
        yield h
        yield f


class HttpMetrics:
    """Pure ASGI middleware: counts requests and times them by route template (not raw path: no id explosion)."""

    def __init__(self, app, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("videotag_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=registry)  # fmt: skip
        self.latency = Histogram("videotag_http_request_duration_seconds", "HTTP request latency", ["route"],
                                 registry=registry)  # fmt: skip

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.latency.labels(route).observe(time.perf_counter() - t0)
