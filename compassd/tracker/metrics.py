"""compass-tracker's Prometheus metrics: what they are and how the tracker feeds them.

The tracker's state (devices by key and state, waiting requests, connections) is read at
scrape time by a collector, so it can never drift from the scheduler. What happened
(grants, ended requests and leases, how long each waited or held) is counted from the
scheduler's effects: the shell hands every batch it applies to L{TrackerMetrics.observe}.

Counters and histograms are labelled by key only for keys that have had a device
registered: a client may ask for any key name, and a label per made-up name would grow
without bound. Requests for a key no board ever served count under C{key="(none)"}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from ..metrics import new_registry
from .records import (
    DeviceChanged,
    DeviceState,
    Effect,
    Granted,
    LeaseEnded,
    LeaseOutcome,
    RequestEnded,
    RequestOutcome,
)
from .scheduler import Scheduler

NO_KEY = "(none)"
"""The key label of requests for keys no device was ever registered under."""

MAX_KEYS = 500
"""At most this many distinct key labels; later keys count under L{NO_KEY}."""

WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600,
                7200, 14400, 28800, float("inf"))
HOLD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800,
                86400, float("inf"))
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                 float("inf"))


@attrs.define(eq=False)
class _StateCollector:
    """Reads the tracker's state when Prometheus scrapes."""

    scheduler: Callable[[], Scheduler]
    connections: Callable[[], dict[str, int]]
    store_backlog: Callable[[], int | None]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        scheduler = self.scheduler()
        devices = GaugeMetricFamily(
            "compassd_tracker_devices", "Devices known to the tracker, by key and state.",
            labels=["key", "state"])
        device_state = GaugeMetricFamily(
            "compassd_tracker_device_state",
            "1 for the state each device is in now, 0 for the others.",
            labels=["device", "key", "state"])
        waiting = GaugeMetricFamily(
            "compassd_tracker_waiting_requests", "Requests waiting for a device, by key.",
            labels=["key"])
        leases = GaugeMetricFamily(
            "compassd_tracker_active_leases", "Leases held now, by key.", labels=["key"])
        for key in scheduler.keys():
            counts = dict.fromkeys(DeviceState, 0)
            held = 0
            for device in scheduler.pool_devices(key):
                state = device.state
                counts[state] += 1
                held += device.lease is not None
                for each in DeviceState:
                    device_state.add_metric([device.name, key, each.value],
                                            1.0 if each is state else 0.0)
            for state, count in counts.items():
                devices.add_metric([key, state.value], count)
            waiting.add_metric([key], len(scheduler.waiting_ids(key)))
            leases.add_metric([key], held)
        yield devices
        yield device_state
        yield waiting
        yield leases
        connected = GaugeMetricFamily(
            "compassd_tracker_connections",
            "Connections to the tracker that said hello, by role (client, board, admin,"
            " tvm).", labels=["role"])
        for role, count in sorted(self.connections().items()):
            connected.add_metric([role], count)
        yield connected
        backlog = self.store_backlog()
        if backlog is not None:
            yield GaugeMetricFamily(
                "compassd_tracker_store_backlog",
                "History records waiting to be written to the durable store.",
                value=backlog)


@attrs.define(eq=False, slots=False)
class TrackerMetrics:
    """The tracker's metrics in a registry of their own.

    C{scheduler} and C{connections} are read at scrape time; C{store_backlog} returns the
    durable store's queue length, or None when the tracker has no store.
    """

    scheduler: Callable[[], Scheduler]
    connections: Callable[[], dict[str, int]] = dict
    store_backlog: Callable[[], int | None] = lambda: None
    registry: CollectorRegistry = attrs.Factory(new_registry)
    _keys: set[str] = attrs.Factory(set)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.grants = Counter(
            "compassd_tracker_grants", "Leases granted, by key.", ["key"], registry=r)
        self.requests = Counter(
            "compassd_tracker_requests",
            "Requests that ended, by key and outcome (granted, cancelled, timed-out,"
            " withdrawn).", ["key", "outcome"], registry=r)
        self.lease_ends = Counter(
            "compassd_tracker_lease_ends",
            "Leases that ended, by key and reason (released, expired, kicked, unclaimed,"
            " device-lost, client-lost, session-ended).", ["key", "reason"], registry=r)
        self.wait = Histogram(
            "compassd_tracker_wait_seconds",
            "How long granted requests waited for their device, by key.", ["key"],
            buckets=WAIT_BUCKETS, registry=r)
        self.hold = Histogram(
            "compassd_tracker_hold_seconds",
            "How long leases were held when they ended, by key.", ["key"],
            buckets=HOLD_BUCKETS, registry=r)
        self.refused = Counter(
            "compassd_tracker_refused_authentications",
            "Hellos refused (unknown token, missing role, bad board certificate), by the"
            " role asked for.", ["role"], registry=r)
        self.store_write = Histogram(
            "compassd_tracker_store_write_seconds",
            "How long each write to the durable history store took.",
            buckets=STORE_BUCKETS, registry=r)
        self.store_errors = Counter(
            "compassd_tracker_store_errors", "Writes to the durable store that failed.",
            registry=r)
        r.register(_StateCollector(self.scheduler, self.connections, self.store_backlog))

    def key(self, key: str) -> str:
        """The label for C{key}: itself once a device was registered under it."""
        return key if key in self._keys else NO_KEY

    def _known(self, key: str) -> None:
        if key in self._keys or len(self._keys) >= MAX_KEYS:
            return
        self._keys.add(key)
        # Every series of a new key starts at zero, so rate() sees its first event.
        self.grants.labels(key)
        for request_outcome in RequestOutcome:
            self.requests.labels(key, request_outcome.value)
        for lease_outcome in LeaseOutcome:
            self.lease_ends.labels(key, lease_outcome.value)
        self.wait.labels(key)
        self.hold.labels(key)

    def observe(self, effects: Iterable[Effect], now: float) -> None:
        """Count what the scheduler decided in one batch of effects."""
        for effect in effects:
            if isinstance(effect, Granted):
                lease = effect.lease
                key = self.key(lease.device.key)
                self.grants.labels(key).inc()
                self.requests.labels(key, RequestOutcome.GRANTED.value).inc()
                self.wait.labels(key).observe(
                    max(0.0, lease.granted_at - lease.request.enqueued_at))
            elif isinstance(effect, RequestEnded):
                self.requests.labels(self.key(effect.request.key),
                                     effect.outcome.value).inc()
            elif isinstance(effect, LeaseEnded):
                lease = effect.lease
                key = self.key(lease.device.key)
                self.lease_ends.labels(key, effect.outcome.value).inc()
                self.hold.labels(key).observe(max(0.0, now - lease.granted_at))
            elif isinstance(effect, DeviceChanged):
                self._known(effect.device.key)

    def refused_hello(self, role: str) -> None:
        """Count a refused hello (the role is one of the tracker's, or C{other})."""
        self.refused.labels(role if role in ("client", "board", "admin") else "other").inc()

    def store_wrote(self, seconds: float) -> None:
        self.store_write.observe(seconds)


def connection_counts(connections: Iterable[Any]) -> dict[str, int]:
    """Connections by role, for L{TrackerMetrics.connections}: greeted AMP connections
    count under their role, TVM ones under C{tvm}; those that have not said hello yet
    are left out."""
    counts = {"client": 0, "board": 0, "admin": 0, "tvm": 0}
    for connection in connections:
        role = getattr(connection, "role", None)
        if getattr(connection, "identity", None) is None:
            if type(connection).__name__.startswith("Tvm"):
                counts["tvm"] += 1
            continue
        if role in counts:
            counts[role] += 1
    return counts


__all__ = ["TrackerMetrics", "connection_counts", "NO_KEY"]
