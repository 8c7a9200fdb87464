"""What compass-tracker answers about the past: usage reports, history, usage resets.

A user who is not an admin sees only their own rows (with their place among everyone
in fair share's order); an admin sees everyone's and may reset a user's decayed usage,
which is audited. The numbers come from L{compassd.tracker.accounting}; the rows from
the tracker's history source (its store when it has one, else its memory).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks

from ..protocol import BadRequest, NotAuthorized
from ..protocol import accounting as pa
from ..protocol.limits import check_name, check_seconds
from .access import Identity
from .accounting import Standing, held_row, history_wire, usage_groups, usage_report
from .connection import TrackerPeer, log
from .history import WEEK
from .records import QueueChanged
from .store.records import HistoryQuery, HistoryRow, UsageGroup, UsageQuery

MAX_REPORT_ROWS = 200_000
"""History rows a usage report adds up at most when it reads the tracker's memory (no
store, or one that cannot be read), as many as the memory keeps: that report is added up
on the reactor thread, so a long window on a busy tracker is cut at the newest rows here
(the answer's C{history} says so) rather than stall everyone. With a store the database
adds the report up, in the store's thread. C{bench/accounting.py} times both."""


@inlineCallbacks
def read_usage(tracker: Any, query: UsageQuery
               ) -> Generator[Deferred[Any], Any, tuple[list[UsageGroup], str]]:
    """The groups of C{query}'s report (the leases held now count up to C{query.until})
    and a note of where they came from. With a store the database adds them up (the
    tracker's C{usage_reader}, else the journal's store in its thread), given the leases
    held now and the rows the journal has not written yet; without one, or while it
    cannot be read, they come from the tracker's memory (the newest L{MAX_REPORT_ROWS})."""
    held = tuple(
        held_row(lease, query.until) for lease in tracker.scheduler.leases.values()
        if (query.key is None or lease.request.key == query.key)
        and (query.user is None or lease.user == query.user))
    journal = tracker.journal
    read = tracker.usage_reader
    if read is None and journal is not None:
        read = lambda q: journal.report(lambda store: store.usage(q))  # noqa: E731
    note = memory_note(tracker.recent.started_at)
    if read is not None:
        unwritten = tuple(
            row for row in (journal.unwritten_history() if journal is not None else ())
            if row.ended_at >= query.since)
        try:
            groups = yield read(attrs.evolve(query, extra=held + unwritten))
        except Exception as e:
            log.warn("a usage report could not read the store: {why}; it has only the"
                     " tracker's memory", why=str(e))
            note += f"; the store could not be read ({e})"
        else:
            return list(groups), "store"
    rows: list[HistoryRow] = []
    before = None
    while len(rows) < MAX_REPORT_ROWS:
        page = tracker.recent.history(HistoryQuery(
            user=query.user, key=query.key, since=query.since, before=before,
            limit=min(10_000, MAX_REPORT_ROWS - len(rows))))
        rows += page
        if not page or len(rows) >= MAX_REPORT_ROWS:
            break
        before = (page[-1].ended_at, page[-1].id)
    if len(rows) >= MAX_REPORT_ROWS:
        note += f"; cut at the newest {MAX_REPORT_ROWS} rows"
    return usage_groups(rows, attrs.evolve(query, extra=held)), note


class ReportResponders(TrackerPeer):
    """The accounting commands (L{compassd.protocol.accounting})."""

    def _own_or_admin(self, identity: Identity, user: str | None, what: str) -> str | None:
        """The user a report is about: anyone (or everyone) for an admin, else the
        caller themself."""
        if user is not None:
            check_name("user name", user)
        if identity.may("admin"):
            return user
        if user is not None and user != identity.user:
            raise NotAuthorized(
                f"User {identity.user} may see only their own {what}, not {user}'s;"
                " an admin sees everyone's.")
        return identity.user

    @pa.Usage.responder
    @inlineCallbacks
    def usage(self, key: str | None = None, user: str | None = None, by: str | None = None,
              since: float | None = None, start: int | None = None,
              limit: int | None = None) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        identity = self._require("client")
        by = by or "user"
        if by not in pa.GROUPINGS:
            raise BadRequest(f"A usage report is by {', '.join(pa.GROUPINGS)}; not {by!r}.")
        if key is not None:
            check_name("device key", key)
        window = check_seconds("since", since) or WEEK
        limit = _limit(limit, pa.USAGE_PAGE)
        start = max(0, start or 0)
        only = self._own_or_admin(identity, user, "usage")
        accounts = {i.user: i.account for i in (self.tracker.access.tokens or {}).values()
                    if i.account is not None}
        now = self._now
        groups, source = yield read_usage(self.tracker, UsageQuery(
            since=now - window, until=now, by=by, user=only, key=key,
            accounts=tuple(sorted(accounts.items()))))
        scheduler = self._scheduler
        standings: dict[str, dict[str, Standing]] | None = None
        if scheduler.fair_share and by in ("user", "account"):
            # everyone fair share weighs: usage on record, waiting, or used in the window
            known: dict[str, set[str]] = {}
            if by == "user":
                for group in groups:
                    known.setdefault(group.key, set()).add(group.name)
            for k in set(scheduler.usage_keys()) | set(scheduler.keys()):
                known.setdefault(k, set()).update(
                    scheduler.usage_users(k), (r.user for r in scheduler.waiting(k, now)))
            standings = {
                k: {u: Standing(scheduler.share(u), scheduler.usage(k, u, now))
                    for u in users}
                for k, users in known.items() if users and (key is None or k == key)}
        report = usage_report(groups, by, standings, accounts)
        if only is not None:
            mine = only if by != "account" else accounts.get(only, only)
            if by in ("user", "account"):
                report = [r for r in report if r["name"] == mine]
        return {"rows": report[start:start + limit], "more": len(report) > start + limit,
                "half_life": scheduler.policy.fair_share_half_life, "since": window,
                "history": source}

    @pa.ResetUsage.responder
    def reset_usage(self, user: str | None = None) -> dict[str, Any] | Deferred[dict[str, Any]]:
        identity = self._require("admin")
        if user is not None:
            check_name("user name", user)
        scheduler = self._scheduler
        had = [k for k in scheduler.usage_keys()
               if (scheduler.usage_users(k) if user is None else
                   user in scheduler.usage_users(k))]
        now = self._now
        forgotten = [(k, name) for k in had
                     for name in ([user] if user is not None else scheduler.usage_users(k))]
        changed = scheduler.reset_usage(now, user)
        self.tracker.journal_usage(forgotten)
        who = user if user is not None else "everyone"
        log.info("admin {admin} reset the fair-share usage of {who} ({keys})",
                 admin=identity.user, who=who, keys=", ".join(had) or "none on record")
        self.tracker.record("usage-reset", user=identity.user, target=who, keys=had,
                            peer=self.describe())
        self._apply([QueueChanged(k) for k in changed])
        return self._once_kept({"keys": had})

    @pa.History.responder
    @inlineCallbacks
    def history(self, user: str | None = None, device: str | None = None,
                key: str | None = None, since: float | None = None,
                before_at: float | None = None, before_id: str | None = None,
                limit: int | None = None) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        identity = self._require("client")
        for what, name in (("device name", device), ("device key", key)):
            if name is not None:
                check_name(what, name)
        if (before_at is None) != (before_id is None):
            raise BadRequest("A history page's cursor is before_at and before_id together.")
        window = check_seconds("since", since)
        limit = _limit(limit, pa.HISTORY_PAGE)
        only = self._own_or_admin(identity, user, "history")
        now = self._now
        query = HistoryQuery(
            user=only, device=device, key=key,
            since=None if window is None else now - window,
            before=None if before_at is None or before_id is None else (before_at, before_id),
            limit=limit + 1)
        rows, source = yield self.tracker.history_rows(query, limit + 1)
        return {"rows": [history_wire(r) for r in rows[:limit]], "more": len(rows) > limit,
                "now": self._now, "history": source}


def _limit(limit: int | None, most: int) -> int:
    if limit is None:
        return most
    if not 1 <= limit <= most:
        raise BadRequest(f"A page holds 1 to {most} entries, not {limit}.")
    return limit


def memory_note(started_at: float | None) -> str:
    """How a report says its numbers come from the tracker's memory."""
    if started_at is None:
        return "memory (nothing ended yet since the tracker started)"
    clock = time.strftime("%Y-%m-%d %H:%M", time.localtime(started_at))
    return f"memory since {clock}"


__all__ = ["MAX_REPORT_ROWS", "ReportResponders", "memory_note", "read_usage"]
