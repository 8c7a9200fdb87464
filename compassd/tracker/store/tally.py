"""What one history row adds to a usage report, and waits kept in buckets.

A usage report of a window [since, until) counts, for each history row that ended at or
after C{since}: a lease for the part of [granted_at, ended_at] inside the window, its
wait if it was granted in the window, and a request that ended unserved inside it
(L{counts}). L{compassd.tracker.accounting.usage_groups} adds rows up with it in memory;
the store adds up most of a long window from per-period sums (L{compassd.tracker.store.
_rollup}) and the rest of it with it.

A per-period sum cannot keep every wait, so it keeps a histogram: waits in logarithmic
buckets, L{PER_DOUBLING} to each doubling from L{FLOOR} (1 ms). A bucket's value
(L{bucket_value}, its geometric middle) is within 4.5 % of every wait in it; waits under
1 ms are bucket 0, worth 0. Since bucketing keeps the order of waits, the nearest-rank
percentile of bucketed waits is the bucket value of the exact percentile's bucket.

Plain functions and data; no I/O.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import attrs
import numpy

from .records import UsageGroup

PER_DOUBLING = 8
"""Buckets to each doubling of a wait."""

FLOOR = 0.001
"""Waits under this many seconds share bucket 0, worth 0."""


def bucket(wait: float) -> int:
    """The histogram bucket of a wait of C{wait} seconds."""
    if not wait >= FLOOR:  # (and NaN)
        return 0
    return 1 + int(math.floor(PER_DOUBLING * math.log2(wait / FLOOR)))


def bucket_value(index: int) -> float:
    """What the waits in bucket C{index} count as: the geometric middle of its range."""
    if index <= 0:
        return 0.0
    return FLOOR * 2.0 ** ((index - 0.5) / PER_DOUBLING)


@attrs.frozen
class Counts:
    """What one row adds to its group: leases, board-seconds, unserved requests, and its
    wait in seconds when it was granted inside the window (None otherwise)."""

    leases: int
    seconds: float
    unserved: int
    wait: float | None


def counts(requested_at: float, granted_at: float | None, ended_at: float,
           since: float, until: float) -> Counts | None:
    """What a row with these times adds to a report of [C{since}, C{until}); None when
    it adds nothing (it ended before the window, or its lease is wholly outside)."""
    if ended_at < since:
        return None
    if granted_at is None:
        return Counts(0, 0.0, 1, None) if ended_at < until else None
    start, end = max(granted_at, since), min(ended_at, until)
    if end < start or (end == start and granted_at < since):
        return None
    wait = granted_at - requested_at if since <= granted_at <= until else None
    return Counts(1, end - start, 0, wait)


def whole(requested_at: float, granted_at: float | None, ended_at: float) -> Counts:
    """What a row adds to a window that holds all of it (what a period's sums hold)."""
    if granted_at is None:
        return Counts(0, 0.0, 1, None)
    return Counts(1, ended_at - granted_at, 0, granted_at - requested_at)


@attrs.define
class Tally:
    """A group's sums: leases, board-seconds, unserved requests, and its waits, exact
    (C{waits}) and bucketed (C{buckets}: bucket -> how many)."""

    leases: int = 0
    seconds: float = 0.0
    unserved: int = 0
    waits: list[float] = attrs.Factory(list)
    buckets: dict[int, int] = attrs.Factory(dict)

    def add(self, c: Counts, sign: int = 1) -> None:
        """Add (or with C{sign} -1, take away) one row's counts; a wait taken away
        is taken from its bucket."""
        self.leases += sign * c.leases
        self.seconds += sign * c.seconds
        self.unserved += sign * c.unserved
        if c.wait is not None:
            if sign > 0:
                self.waits.append(c.wait)
            else:
                self.count(bucket(c.wait), -1)

    def count(self, index: int, n: int) -> None:
        self.buckets[index] = self.buckets.get(index, 0) + n

    def bucket_all(self) -> None:
        """Put the exact waits into their buckets too."""
        for w in self.waits:
            self.count(bucket(w), 1)
        self.waits = []

    def granted(self) -> int:
        """How many waits the tally holds."""
        return len(self.waits) + sum(self.buckets.values())

    def wait_percentile(self, q: int) -> float | None:
        """The nearest-rank C{q}-th percentile of the waits: exact when none is
        bucketed, else the value of the bucket it falls in; None without waits."""
        n = self.granted()
        if not n:
            return None
        rank = max(1, (q * n + 99) // 100)
        if not self.buckets:
            return sorted(self.waits)[min(rank, n) - 1]
        merged = dict(self.buckets)
        for w in self.waits:
            b = bucket(w)
            merged[b] = merged.get(b, 0) + 1
        seen = 0
        for index in sorted(merged):
            seen += merged[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(merged))  # (not reached: the counts add up to n)

    def usage_group(self, key: str, name: str) -> UsageGroup:
        """The tally as a usage report's group of C{name} on C{key}."""
        return UsageGroup(key=key, name=name, leases=self.leases, seconds=self.seconds,
                          unserved=self.unserved, waits=self.granted(),
                          wait_p50=self.wait_percentile(50),
                          wait_p95=self.wait_percentile(95))


def group_name(by: str, key: str, user: str, device: str | None,
               accounts: Mapping[str, str]) -> str | None:
    """The group a row of C{key}, C{user} and C{device} falls in, in a report C{by}
    user, account (a user in none is an account of their own name), key or device;
    None for a report by device of a row without one."""
    if by == "user":
        return user
    if by == "account":
        return accounts.get(user, user)
    if by == "key":
        return key
    return device


def encode(buckets: dict[int, int]) -> str:
    """A histogram as the store keeps it: (bucket, count) pairs, both 32-bit signed
    little endian, in hex, empty buckets left out. Histograms joined end to end add up
    (L{summed}), so a write appends a row's pairs, and a prune its negative counts."""
    return b"".join(struct.pack("<ii", b, n) for b, n in sorted(buckets.items()) if n).hex()


def summed(text: str) -> dict[int, int]:
    """The sum of the histograms whose L{encode}s are joined in C{text}: bucket -> count,
    buckets that add up to none left out."""
    data = bytes.fromhex(text or "")
    if len(data) % 8:
        raise ValueError("Stored wait histograms are not whole (bucket, count) pairs.")
    if not data:
        return {}
    pairs = numpy.frombuffer(data, dtype="<i4").reshape(-1, 2)
    if (pairs[:, 0] < 0).any():
        raise ValueError("A stored wait histogram has a bucket below 0.")
    total = numpy.bincount(pairs[:, 0], weights=pairs[:, 1].astype(numpy.float64))
    return {int(i): int(total[i]) for i in numpy.flatnonzero(total)}


__all__ = ["FLOOR", "PER_DOUBLING", "Counts", "Tally", "bucket", "bucket_value", "counts",
           "encode", "group_name", "summed", "whole"]
