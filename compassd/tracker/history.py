"""What the tracker remembers of the past, for the dashboard's charts.

The dashboard asks a L{HistorySource} for the leases and waits in a window of time and
draws utilisation per board and per key, wait-time percentiles and board-hours per user
from them (L{summarise}). L{MemoryHistory} is the source the tracker always has: it
follows the scheduler's effects and keeps the last week in memory (bounded), so it
starts empty at every restart. The durable store (issue 16) is the other source: anything
with the same two methods can be handed to the dashboard instead.

Pure: no clock, no I/O; every method takes the time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from .records import Effect, Granted, LeaseEnded

DAY = 86400.0
WEEK = 7 * DAY


@attrs.frozen
class LeaseSpan:
    """One lease: on which device (and key), by whom, from when until when (None while
    it is still held)."""

    device: str
    key: str
    user: str
    start: float
    end: float | None
    lease: str = ""
    """The lease's id, where known (to tell the same lease in two sources apart)."""


@attrs.frozen
class WaitSample:
    """One request that was granted: its key and how long it waited, at which time."""

    key: str
    at: float
    waited: float
    lease: str = ""


class HistorySource(Protocol):
    """Where the dashboard reads the past from."""

    def leases(self, since: float, until: float) -> Iterable[LeaseSpan]:
        """The leases that overlap [since, until)."""

    def waits(self, since: float, until: float) -> Iterable[WaitSample]:
        """The grants made in [since, until) and how long each waited."""


@attrs.define
class MemoryHistory:
    """The last C{keep} seconds of leases and waits, from the scheduler's effects; at
    most C{limit} of each (the oldest go first)."""

    keep: float = WEEK
    limit: int = 200_000
    _ended: deque[LeaseSpan] = attrs.Factory(deque)
    _open: dict[str, LeaseSpan] = attrs.Factory(dict)
    _waits: deque[WaitSample] = attrs.Factory(deque)

    def observe(self, effects: Iterable[Effect], now: float) -> None:
        for effect in effects:
            if isinstance(effect, Granted):
                lease = effect.lease
                self._open[lease.id] = LeaseSpan(lease.device.name, lease.device.key,
                                                 lease.user, lease.granted_at, None, lease.id)
                self._waits.append(WaitSample(lease.device.key, lease.granted_at,
                                              lease.granted_at - lease.request.enqueued_at,
                                              lease.id))
            elif isinstance(effect, LeaseEnded):
                span = self._open.pop(effect.lease.id, None)
                if span is not None:
                    self._ended.append(attrs.evolve(span, end=now))
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.keep
        while self._ended and (len(self._ended) > self.limit
                               or (self._ended[0].end or now) < horizon):
            self._ended.popleft()
        while self._waits and (len(self._waits) > self.limit or self._waits[0].at < horizon):
            self._waits.popleft()

    def leases(self, since: float, until: float) -> list[LeaseSpan]:
        spans = [s for s in self._ended if s.start < until and (s.end or until) > since]
        spans += [s for s in self._open.values() if s.start < until]
        return spans

    def waits(self, since: float, until: float) -> list[WaitSample]:
        return [w for w in self._waits if since <= w.at < until]


@attrs.frozen
class Summary:
    """What the charts show of one window: C{buckets} equal slices of [since, until);
    utilisation (0 to 1) per device and per key in each slice; wait percentiles per
    key; board-hours per user."""

    since: float
    until: float
    buckets: int
    by_device: dict[str, list[float]]
    by_key: dict[str, list[float]]
    waits: dict[str, dict[str, float]]
    hours_by_user: dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """The C{q}-th percentile (0-100) of C{values} by the nearest-rank method; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) / 100))  # exact for a whole q, as in SQL
    return ordered[min(rank, len(ordered)) - 1]


def summarise(source: HistorySource, since: float, until: float, buckets: int,
              devices: dict[str, str]) -> Summary:
    """Utilisation, waits and board-hours in [since, until) split into C{buckets} slices.

    C{devices} maps each device that is registered now to its key: they get a row even
    when idle. A key's utilisation is the leased time of its devices over the time of as
    many devices as it had rows for (the devices registered now, and any that held a
    lease in the window)."""
    width = (until - since) / buckets
    by_device: dict[str, list[float]] = {name: [0.0] * buckets for name in devices}
    key_of = dict(devices)
    hours: dict[str, float] = {}
    for span in source.leases(since, until):
        start, end = max(span.start, since), min(span.end or until, until)
        if end <= start:
            continue
        row = by_device.setdefault(span.device, [0.0] * buckets)
        key_of.setdefault(span.device, span.key)
        hours[span.user] = hours.get(span.user, 0.0) + (end - start) / 3600
        first = min(buckets - 1, int((start - since) // width))
        last = min(buckets - 1, int((end - since) // width))
        for i in range(first, last + 1):
            lo, hi = since + i * width, since + (i + 1) * width
            row[i] += max(0.0, min(end, hi) - max(start, lo))
    for name, row in by_device.items():
        by_device[name] = [min(1.0, busy / width) for busy in row]
    by_key: dict[str, list[float]] = {}
    members: dict[str, int] = {}
    for name, row in by_device.items():
        key = key_of[name]
        total = by_key.setdefault(key, [0.0] * buckets)
        members[key] = members.get(key, 0) + 1
        for i, value in enumerate(row):
            total[i] += value
    for key, total in by_key.items():
        by_key[key] = [value / members[key] for value in total]
    samples: dict[str, list[float]] = {}
    for wait in source.waits(since, until):
        samples.setdefault(wait.key, []).append(wait.waited)
    waits = {
        key: {"count": float(len(values)), "p50": percentile(values, 50),
              "p95": percentile(values, 95), "max": max(values)}
        for key, values in sorted(samples.items())
    }
    return Summary(since, until, buckets, dict(sorted(by_device.items())),
                   dict(sorted(by_key.items())), waits,
                   dict(sorted(hours.items(), key=lambda item: -item[1])))


__all__ = ["DAY", "WEEK", "HistorySource", "LeaseSpan", "MemoryHistory", "Summary",
           "WaitSample", "percentile", "summarise"]
