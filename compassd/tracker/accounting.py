"""Where the board time went: the rows of ``compass history`` and ``compass usage``.

L{RecentHistory} keeps, in memory and bounded, a L{HistoryRow} for every lease that ended
and every request that ended without a grant, made from the scheduler's effects, and
answers a L{HistoryQuery} exactly as the durable store does (newest first, paged by the
last row's ``(ended_at, id)``). A tracker with a store answers from the store instead.

L{usage_groups} adds up history rows and the leases held now into a usage report's
groups (board-hours, leases, waits by user, account, key or device), as the store does
in SQL; L{usage_report} adds fair share's ledger: share, decayed usage and the order that
results.

Plain functions and data, time passed in; no Twisted, no I/O.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .records import Effect, LeaseEnded, LeaseOutcome, RequestEnded, RequestOutcome
from .store.records import HistoryQuery, HistoryRow, UsageGroup, UsageQuery
from .store.tally import Tally, counts, group_name

HELD = "held"
"""The outcome of a lease still held, in a usage report's input."""


def lease_row(effect: LeaseEnded, now: float) -> HistoryRow:
    """The history row of a lease that ended at C{now}."""
    lease = effect.lease
    request = lease.request
    return HistoryRow(
        id=lease.id, user=request.user, key=request.key, requested_at=request.enqueued_at,
        ended_at=now, outcome=effect.outcome.value, granted_at=lease.granted_at,
        device=lease.device.name, request_id=request.id, priority=request.priority,
        detail=effect.message)


def request_row(effect: RequestEnded, now: float) -> HistoryRow:
    """The history row of a request that ended at C{now} without a grant."""
    request = effect.request
    return HistoryRow(
        id=request.id, user=request.user, key=request.key,
        requested_at=request.enqueued_at, ended_at=now, outcome=effect.outcome.value,
        request_id=request.id, priority=request.priority, detail=effect.message)


def matches(row: HistoryRow, query: HistoryQuery) -> bool:
    """Whether C{row} is one C{query} asks for (its filters, window and cursor)."""
    if query.user is not None and row.user != query.user:
        return False
    if query.device is not None and row.device != query.device:
        return False
    if query.key is not None and row.key != query.key:
        return False
    if query.since is not None and row.ended_at < query.since:
        return False
    if query.until is not None and row.ended_at >= query.until:
        return False
    return query.before is None or (row.ended_at, row.id) < query.before


@attrs.define
class RecentHistory:
    """The last C{limit} history rows, from the scheduler's effects (the oldest go
    first), ordered by C{(ended_at, id)} as the store orders them."""

    limit: int = 200_000
    started_at: float | None = None
    """When the first effect was seen: what memory covers."""
    _rows: deque[HistoryRow] = attrs.Factory(deque)
    _order: deque[tuple[float, str]] = attrs.Factory(deque)

    def observe(self, effects: Iterable[Effect], now: float) -> None:
        if self.started_at is None:
            self.started_at = now
        for effect in effects:
            if isinstance(effect, LeaseEnded):
                self.add(lease_row(effect, now))
            elif isinstance(effect, RequestEnded) and \
                    effect.outcome is not RequestOutcome.GRANTED:
                self.add(request_row(effect, now))

    def add(self, row: HistoryRow) -> None:
        place = (row.ended_at, row.id)
        if self._order and place < self._order[-1]:
            at = bisect.bisect(self._order, place)  # rare: rows come in time order
            self._order.insert(at, place)
            self._rows.insert(at, row)
        else:
            self._order.append(place)
            self._rows.append(row)
        while len(self._rows) > self.limit:
            self._rows.popleft()
            self._order.popleft()

    def __len__(self) -> int:
        return len(self._rows)

    def history(self, query: HistoryQuery) -> list[HistoryRow]:
        """A page of rows, newest first, as L{compassd.tracker.store.IStore.history}."""
        end = len(self._order)
        if query.before is not None:
            end = bisect.bisect_left(self._order, query.before)
        if query.until is not None:
            end = min(end, bisect.bisect_left(self._order, (query.until, "")))
        page: list[HistoryRow] = []
        limit = max(1, min(query.limit, 10000))
        for i in range(end - 1, -1, -1):
            row = self._rows[i]
            if query.since is not None and row.ended_at < query.since:
                break
            if matches(row, query):
                page.append(row)
                if len(page) >= limit:
                    break
        return page


def held_row(lease: Any, now: float) -> HistoryRow:
    """A lease held now, as a row that ends now (for a usage report)."""
    request = lease.request
    return HistoryRow(
        id=lease.id, user=request.user, key=request.key, requested_at=request.enqueued_at,
        ended_at=now, outcome=HELD, granted_at=lease.granted_at, device=lease.device.name,
        request_id=request.id, priority=request.priority)


@attrs.frozen
class Standing:
    """Fair share's view of one user of one key: their share and decayed board-seconds."""

    share: float
    decayed: float


def usage_groups(rows: Iterable[HistoryRow], query: UsageQuery) -> list[UsageGroup]:
    """What L{compassd.tracker.store.IStore.usage} adds up in SQL, over rows in memory:
    the groups of C{query}'s report from C{rows} and C{query.extra} (an extra row whose
    id is in C{rows} counts once), sorted by key then name."""
    accounts = dict(query.accounts)
    rows = list(rows)
    seen = {row.id for row in rows}
    tallies: dict[tuple[str, str], Tally] = {}
    for row in rows + [row for row in query.extra if row.id not in seen]:
        if (query.user is not None and row.user != query.user) \
                or (query.key is not None and row.key != query.key):
            continue
        name = group_name(query.by, row.key, row.user, row.device, accounts)
        found = counts(row.requested_at, row.granted_at, row.ended_at, query.since,
                       query.until)
        if name is None or found is None:
            continue
        tallies.setdefault((row.key, name), Tally()).add(found)
    return [t.usage_group(key, name) for (key, name), t in sorted(tallies.items())]


def usage_report(
    groups: Iterable[UsageGroup],
    by: str = "user",
    standings: Mapping[str, Mapping[str, Standing]] | None = None,
    accounts: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of a usage report, sorted by key then name: the window's C{groups}
    (L{usage_groups}, or the store's), and for users and accounts fair share's view.

    C{standings}: per key, each user's L{Standing} (None without fair share).
    C{accounts}: each user's account; a user in none stands as an account of their own
    name. Users and accounts are ranked within each key by decayed usage per share
    (1 goes first; ties by name); one with no board time in the window still gets a row.
    """
    accounts = accounts or {}
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for group in groups:
        result[group.key, group.name] = {
            "name": group.name, "key": group.key, "leases": group.leases,
            "hours": group.seconds / 3600, "unserved": group.unserved,
            "wait_p50": group.wait_p50, "wait_p95": group.wait_p95,
            "share": None, "decayed": None, "order": None, "of": None,
        }
    if standings is not None and by in ("user", "account"):
        for key, users in standings.items():
            ranked: dict[str, Standing] = {}
            for user, standing in users.items():
                name = user if by == "user" else accounts.get(user, user)
                before = ranked.get(name, Standing(0.0, 0.0))
                ranked[name] = Standing(before.share + standing.share,
                                        before.decayed + standing.decayed)
            order = sorted(ranked, key=lambda n: (ranked[n].decayed / ranked[n].share, n))
            for place, name in enumerate(order, 1):
                row = result.setdefault((key, name), {
                    "name": name, "key": key, "leases": 0, "hours": 0.0, "unserved": 0,
                    "wait_p50": None, "wait_p95": None})
                row.update(share=ranked[name].share, decayed=ranked[name].decayed / 3600,
                           order=place, of=len(order))
    return [result[k] for k in sorted(result)]


def history_wire(row: HistoryRow) -> dict[str, Any]:
    """A history row as L{compassd.protocol.accounting.HISTORY_ROW} carries it."""
    return {"id": row.id, "kind": row.kind, "user": row.user, "key": row.key,
            "device": row.device, "request": row.request_id, "priority": row.priority,
            "requested_at": row.requested_at, "granted_at": row.granted_at,
            "ended_at": row.ended_at, "outcome": row.outcome, "detail": row.detail}


OUTCOMES = tuple(o.value for o in LeaseOutcome) + tuple(
    o.value for o in RequestOutcome if o is not RequestOutcome.GRANTED)
"""Every way a history row can end."""

__all__ = ["HELD", "OUTCOMES", "RecentHistory", "Standing", "held_row", "history_wire",
           "lease_row", "matches", "request_row", "usage_groups", "usage_report"]
