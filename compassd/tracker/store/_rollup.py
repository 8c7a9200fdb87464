"""Per-day sums of the history, so that a usage report of a long window reads a few rows
per user and day instead of every lease.

C{compass_report_periods} holds, for each period (a day, L{PERIOD}) and each user (C{dim}
``user``) and each device (``device``) of each key, the sums of the history rows
I{requested} in that period: leases, board-seconds from grant to end, unserved
requests, and a histogram of the waits (L{compassd.tracker.store.tally}). The store
keeps it with every write and prune of history, in the same transaction; a store
upgraded to it, or opened with another period, fills it from the history once.

A report of [since, until) adds up the periods wholly inside the window (their rows
were requested at or after C{since}), and row by row, from the history's report index,
the few rows the periods cannot stand for:

- rows requested before the first whole period that end at or after C{since}: every
  one ends before that period's start plus the longest span (end minus request) of any
  row stored (kept in C{compass_meta} as C{report_span}), so an C{ended_at} range finds
  them;
- rows requested in or after the last, partial period;
- rows of the whole periods that end at or after C{until}, which the window cuts: their
  whole counts are taken away from their period and their counts in the window added.

Board-seconds, leases and unserved requests come out exact; the median and 95th
percentile of the waits are those of the bucketed waits, within 4.5 % of the exact ones
(a window without a whole period is added up exactly, by L{compassd.tracker.store.
_report}).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .records import HistoryRow, UsageGroup, UsageQuery
from .tally import Tally, bucket, counts, encode, group_name, summed, whole

TABLE = "compass_report_periods"

PERIOD = 86400.0
"""The length of one period of sums, in seconds: a day (UTC)."""

SPAN = "report_span"
PERIOD_META = "report_period"

SINCE_VERSION = 4
"""The schema version that made the sums' table."""

TIMES = "requested_at, granted_at, ended_at, key, user_name, device"

_Slot = tuple[str, int, str, str]
"""(dim, period, key, name)."""


def _slots(row: Sequence[Any], period: float) -> list[_Slot]:
    requested, _, _, key, user, device = row[:6]
    index = int(math.floor(requested / period))
    slots = [("user", index, key, user)]
    if device is not None:
        slots.append(("device", index, key, device))
    return slots


def add_rows(cur: Any, p: str, rows: Iterable[Sequence[Any]], period: float,
             sign: int = 1) -> float:
    """Add (or with C{sign} -1, take away) history rows, as (requested_at, granted_at,
    ended_at, key, user, device), to their periods' sums; returns their longest span."""
    changes: dict[_Slot, Tally] = {}
    span = _tally(rows, period, sign, changes)
    _apply(cur, p, changes)
    return span


def _tally(rows: Iterable[Sequence[Any]], period: float, sign: int,
           changes: dict[_Slot, Tally]) -> float:
    span = 0.0
    for row in rows:
        requested, granted, ended = row[0], row[1], row[2]
        span = max(span, ended - requested)
        c = whole(requested, granted, ended)
        for slot in _slots(row, period):
            tally = changes.get(slot)
            if tally is None:
                tally = changes[slot] = Tally()
            tally.leases += sign * c.leases
            tally.seconds += sign * c.seconds
            tally.unserved += sign * c.unserved
            if c.wait is not None:
                tally.count(bucket(c.wait), sign)
    return span


def _apply(cur: Any, p: str, changes: dict[_Slot, Tally]) -> None:
    """Add C{changes} to the sums: one upsert per slot that adds the counts and appends
    the histogram's pairs; slots left with no lease and no unserved request go."""
    if not changes:
        return
    cur.executemany(
        f"INSERT INTO {TABLE} (dim, period, key, name, leases, seconds, unserved, waits)"
        f" VALUES ({', '.join([p] * 8)}) ON CONFLICT (dim, period, key, name) DO UPDATE"
        f" SET leases = {TABLE}.leases + excluded.leases,"
        f" seconds = {TABLE}.seconds + excluded.seconds,"
        f" unserved = {TABLE}.unserved + excluded.unserved,"
        f" waits = {TABLE}.waits || excluded.waits",
        [slot + (t.leases, t.seconds, t.unserved, encode(t.buckets))
         for slot, t in sorted(changes.items())])
    if any(t.leases < 0 or t.unserved < 0 for t in changes.values()):
        cur.execute(f"DELETE FROM {TABLE} WHERE leases <= 0 AND unserved <= 0")


def rebuild(cur: Any, p: str, period: float) -> float:
    """Fill the sums from the whole history (after an upgrade, or for a new period);
    returns the longest span."""
    cur.execute(f"DELETE FROM {TABLE}")
    cur.execute(f"SELECT {TIMES} FROM compass_history")
    changes: dict[_Slot, Tally] = {}
    span = 0.0
    while True:
        rows = cur.fetchmany(20000)
        if not rows:
            break
        span = max(span, _tally(rows, period, 1, changes))
    cur.executemany(
        f"INSERT INTO {TABLE} (dim, period, key, name, leases, seconds, unserved, waits)"
        f" VALUES ({', '.join([p] * 8)})",
        [slot + (t.leases, t.seconds, t.unserved, encode(t.buckets))
         for slot, t in sorted(changes.items())])
    return span


_JOIN = {"sqlite": "group_concat({}, '')", "postgresql": "string_agg({}, '')"}
"""Per dialect: the join of a group's texts."""


def usage(cur: Any, p: str, dialect: str, query: UsageQuery, period: float, span: float
          ) -> list[UsageGroup] | None:
    """The report of C{query} from the periods' sums and the rows around them; None
    when the window holds no whole period, or the report is by device for one user
    (the sums are by user or by device, not both): the caller adds those up exactly."""
    since, until = query.since, query.until
    first = int(math.ceil(since / period))
    last = int(math.floor(until / period))
    if last <= first or (query.by == "device" and query.user is not None):
        return None
    dim = "device" if query.by == "device" else "user"
    accounts = dict(query.accounts)

    def group(key: str, user: str, device: str | None) -> str | None:
        return group_name(query.by, key, user, device, accounts)

    def only(user_column: str) -> tuple[str, list[Any]]:
        """The conditions for the query's key and user."""
        text, bound = "", []
        for column, value in (("key", query.key), (user_column, query.user)):
            if value is not None:
                text += f" AND {column} = {p}"
                bound.append(value)
        return text, bound

    tallies: dict[tuple[str, str], Tally] = {}
    # the periods' sums, added up by the database per key and name; the histograms
    # come back joined
    sql = (f"SELECT key, name, SUM(leases), SUM(seconds), SUM(unserved),"
           f" {_JOIN[dialect].format('waits')} FROM {TABLE}"
           f" WHERE dim = {p} AND period >= {p} AND period < {p}")
    conditions, bound = only("name")
    cur.execute(sql + conditions + " GROUP BY key, name", [dim, first, last, *bound])
    for key, name, leases, seconds, unserved, waits in cur.fetchall():
        label = group(key, name, name) if dim == "user" else name
        if label is None:
            continue
        tally = tallies.setdefault((key, label), Tally())
        tally.leases += int(leases)
        tally.seconds += float(seconds)
        tally.unserved += int(unserved)
        for index, n in summed(waits or "").items():
            tally.count(index, n)

    def rows(where: str, more: Sequence[Any]) -> list[Any]:
        conditions, bound = only("user_name")
        text = f"SELECT {TIMES}, id FROM compass_history WHERE {where}{conditions}"
        if query.by == "device":
            text += " AND device IS NOT NULL"
        cur.execute(text, [*more, *bound])
        return list(cur.fetchall())

    start, end = first * period, last * period

    def count(row: Sequence[Any], sign: int = 1) -> None:
        requested, granted, ended, key, user, device = row[:6]
        label = group(key, user, device)
        if label is None:
            return
        found = (whole(requested, granted, ended) if sign < 0
                 else counts(requested, granted, ended, since, until))
        if found is not None:
            tallies.setdefault((key, label), Tally()).add(found, sign)

    # rows the periods hold whole but the window's end cuts
    for row in rows(f"ended_at >= {p} AND requested_at >= {p} AND requested_at < {p}",
                    (until, start, end)):
        count(row, -1)
        count(row)
    # rows requested before the first whole period, or in the last partial one
    for row in rows(f"ended_at >= {p} AND ended_at <= {p} AND requested_at < {p}",
                    (since, start + span + 1.0, start)):
        count(row)
    for row in rows(f"ended_at >= {p} AND requested_at >= {p}", (end, end)):
        count(row)
    # what the store may not have yet; a row it has counts once, as the store's
    extra = [r for r in query.extra if _wanted(r, query)]
    stored = stored_ids(cur, p, [r.id for r in extra])
    for r in extra:
        if r.id not in stored:
            count((r.requested_at, r.granted_at, r.ended_at, r.key, r.user, r.device))
    for t in tallies.values():
        t.bucket_all()  # one rule for every group of the report
    return [t.usage_group(key, name) for (key, name), t in sorted(tallies.items())
            if t.leases or t.unserved]


def _wanted(row: HistoryRow, query: UsageQuery) -> bool:
    return ((query.user is None or row.user == query.user)
            and (query.key is None or row.key == query.key)
            and (query.by != "device" or row.device is not None))


def stored_ids(cur: Any, p: str, ids: list[str]) -> set[str]:
    """Which of C{ids} the history has."""
    found: set[str] = set()
    for at in range(0, len(ids), 500):
        chunk = ids[at:at + 500]
        cur.execute(f"SELECT id FROM compass_history WHERE id IN ({', '.join([p] * len(chunk))})",
                    chunk)
        found.update(r[0] for r in cur.fetchall())
    return found


__all__ = ["PERIOD", "SPAN", "TABLE", "TIMES", "add_rows", "rebuild", "stored_ids", "usage"]
