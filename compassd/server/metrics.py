"""compass-server's Prometheus metrics: sessions, runs, bytes, executors and health.

The board service counts into a L{ServerMetrics} as things happen (a session ends, a run
is answered, bytes cross, an executor restarts or crashes); health and the number of
open sessions are read at scrape time from callables, so they never drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from ..metrics import new_registry

RUN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
               10, 30, 60, 300, float("inf"))

SESSION_OUTCOMES = ("closed", "released", "expired", "kicked", "unclaimed", "client-lost",
                    "device-lost", "session-ended", "executor-died", "failed", "other")
"""How a session can end, as the C{outcome} label says it: the board's own reasons
(closed, expired, client-lost, executor-died, failed) and the tracker's lease outcomes
when it revoked the lease; anything else counts as C{other}."""


@attrs.define(eq=False)
class _StateCollector:
    devices: Callable[[], dict[str, tuple[bool, str]]]
    sessions: Callable[[], int]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "compassd_server_healthy",
            "1 while the device's last health check passed (its driver answers), else 0.",
            labels=["device", "backend"])
        for device, (ok, backend) in sorted(self.devices().items()):
            healthy.add_metric([device, backend], 1.0 if ok else 0.0)
        yield healthy
        yield GaugeMetricFamily("compassd_server_active_sessions",
                                "Sessions open on this board now.", value=self.sessions())


@attrs.define(eq=False, slots=False)
class ServerMetrics:
    """compass-server's metrics in a registry of its own.

    C{devices} returns, per device this server serves, whether it is healthy and its
    backend; C{sessions} the number of open sessions.
    """

    devices: Callable[[], dict[str, tuple[bool, str]]] = dict
    sessions: Callable[[], int] = lambda: 0
    registry: CollectorRegistry = attrs.Factory(new_registry)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.session_ends = Counter(
            "compassd_server_sessions", "Sessions that ended, by outcome.", ["outcome"],
            registry=r)
        for outcome in SESSION_OUTCOMES:
            self.session_ends.labels(outcome)
        self.runs = Histogram(
            "compassd_server_run_seconds",
            "How long runs took on the board, from inputs received to outputs ready, by"
            " backend.", ["backend"], buckets=RUN_BUCKETS, registry=r)
        self.run_errors = Counter(
            "compassd_server_run_errors", "Runs that failed, by backend.", ["backend"],
            registry=r)
        self.uploaded = Counter(
            "compassd_server_uploaded_bytes",
            "Bytes clients sent to this board (uploaded files and run inputs).", registry=r)
        self.downloaded = Counter(
            "compassd_server_downloaded_bytes",
            "Bytes this board sent to clients (downloaded files and run outputs).",
            registry=r)
        self.executor_starts = Counter(
            "compassd_server_executor_starts",
            "Executor processes started (one per session, plus the warm spare).",
            registry=r)
        self.executor_crashes = Counter(
            "compassd_server_executor_crashes",
            "Executor processes that died during a session or failed to start.", registry=r)
        self.health_checks = Counter(
            "compassd_server_health_checks", "Health checks of the driver, by result.",
            ["result"], registry=r)
        self.health_checks.labels("ok")
        self.health_checks.labels("failed")
        r.register(_StateCollector(self.devices, self.sessions))

    def session_ended(self, outcome: str) -> None:
        self.session_ends.labels(outcome if outcome in SESSION_OUTCOMES else "other").inc()

    def ran(self, backend: str, seconds: float) -> None:
        self.runs.labels(backend).observe(max(0.0, seconds))

    def run_failed(self, backend: str) -> None:
        self.run_errors.labels(backend).inc()

    def checked(self, healthy: bool) -> None:
        self.health_checks.labels("ok" if healthy else "failed").inc()


__all__ = ["ServerMetrics", "SESSION_OUTCOMES"]
