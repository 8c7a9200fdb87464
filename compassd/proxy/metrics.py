"""compass-proxy's Prometheus metrics: relayed sessions and bytes, open channels.

The proxy counts into a L{ProxyMetrics} as sessions end and bytes pass; the open
channels and the devices behind it are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from ..metrics import new_registry

DIRECTIONS = ("to-board", "to-client")


@attrs.define(eq=False)
class _StateCollector:
    channels: Callable[[], int]
    boards: Callable[[], int]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "compassd_proxy_open_channels",
            "Channels open now between a client and a board through the proxy.",
            value=self.channels())
        yield GaugeMetricFamily(
            "compassd_proxy_devices",
            "Devices whose boards are connected to the proxy and registered through it.",
            value=self.boards())


@attrs.define(eq=False, slots=False)
class ProxyMetrics:
    """compass-proxy's metrics in a registry of their own."""

    channels: Callable[[], int] = lambda: 0
    boards: Callable[[], int] = lambda: 0
    registry: CollectorRegistry = attrs.Factory(new_registry)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.sessions = Counter(
            "compassd_proxy_relayed_sessions",
            "Client sessions relayed to a board, counted when they end, by outcome"
            " (completed: both sides were joined; unpaired: the board never came).",
            ["outcome"], registry=r)
        for outcome in ("completed", "unpaired"):
            self.sessions.labels(outcome)
        self.relayed = Counter(
            "compassd_proxy_relayed_bytes", "Bytes relayed, by direction.", ["direction"],
            registry=r)
        for direction in DIRECTIONS:
            self.relayed.labels(direction)
        r.register(_StateCollector(self.channels, self.boards))

    def relayed_bytes(self, direction: str, count: int) -> None:
        self.relayed.labels(direction).inc(count)

    def session_ended(self, completed: bool) -> None:
        self.sessions.labels("completed" if completed else "unpaired").inc()


__all__ = ["ProxyMetrics", "DIRECTIONS"]
