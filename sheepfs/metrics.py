"""``--metrics ADDR:PORT``: the status counters in Prometheus' text format.

prometheus_client's own HTTP server runs in a thread of its own; each scrape asks the event
loop for one snapshot (:meth:`sheepfs.status.StatusSource.from_thread`), the same one
``sheepfs status`` shows, so the two never disagree and nothing is counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .status import Status

log = logging.getLogger(__name__)

#: name -> (help, value of a snapshot); gauges, then counters (``_total`` is added).
GAUGES: dict[str, tuple[str, Callable[[Status], float]]] = {
    "uptime_seconds": ("Seconds since the mount began", lambda s: s.uptime),
    "files_open": ("Files with an open handle", lambda s: s.files_open),
    "handles_open": ("Open file handles", lambda s: s.handles),
    "files_staged": ("Files in the spool (new, or replacing a VDI's data)", lambda s: s.staged),
    "uploads_pending": ("Files with data not yet in the cluster", lambda s: s.pending_files),
    "pending_bytes": ("Bytes of spool files not yet in the cluster", lambda s: s.pending_bytes),
    "spool_used_bytes": ("Disk the spool files take", lambda s: s.spool.used),
    "spool_free_bytes": ("Free space on the spool's disk", lambda s: s.spool.free),
    "cache_used_bytes": ("Bytes the chunk cache holds", lambda s: s.cache.used),
    "cache_budget_bytes": ("The chunk cache's budget (--cache-size)", lambda s: s.cache.budget),
    "backend_calls_in_flight": ("Backend calls under way", lambda s: s.calls.in_flight),
    "stopping": ("1 once shutdown has begun (pending data is written)", lambda s: s.stopping),
}
COUNTERS: dict[str, tuple[str, Callable[[Status], float]]] = {
    "backend_calls": ("Backend calls since the mount began", lambda s: s.calls.calls),
    "backend_errors": ("Backend calls that failed", lambda s: s.calls.errors),
    "errors": ("Failures reported to users", lambda s: s.errors),
    "uploaded_files": ("Uploads of spool files into their VDIs", lambda s: s.files_uploaded),
    "uploaded_bytes": ("Bytes uploaded from the spool", lambda s: s.bytes_uploaded),
    "written_back_bytes": ("Cached bytes written back", lambda s: s.bytes_written_back),
}


class StatusCollector(Collector):
    """Turns each snapshot of ``snapshot()`` into metrics; none while it gives None."""

    def __init__(self, snapshot: Callable[[], Status | None]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # registered without a scrape: the event loop may not run yet

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        if s is None:
            return
        w = s.where
        info = GaugeMetricFamily(
            "sheepfs_info", "The mount", labels=["version", "backend", "source", "mountpoint"]
        )
        info.add_metric([w.version, w.backend, w.source, w.mountpoint], 1)
        yield info
        for name, (doc, value) in GAUGES.items():
            yield GaugeMetricFamily(f"sheepfs_{name}", doc, value=float(value(s)))
        for name, (doc, value) in COUNTERS.items():
            yield CounterMetricFamily(f"sheepfs_{name}", doc, value=float(value(s)))
        latency = GaugeMetricFamily(
            "sheepfs_backend_call_seconds",
            "Latency of recent backend calls (median and 99th percentile)",
            labels=["quantile"],
        )
        latency.add_metric(["0.5"], s.calls.median)
        latency.add_metric(["0.99"], s.calls.p99)
        yield latency


def serve_metrics(host: str, port: int, snapshot: Callable[[], Status | None]) -> None:
    """Serve ``/metrics`` on ``host:port`` from a thread; OSError if it cannot listen."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    start_http_server(port, addr=host, registry=registry)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("serving metrics on http://%s/metrics", where)
