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

from twisted.internet.defer import Deferred, inlineCallbacks

from ..protocol import BadRequest, NotAuthorized
from ..protocol import accounting as pa
from ..protocol.limits import check_name, check_seconds
from .access import Identity
from .accounting import Standing, held_row, history_wire, usage_report
from .connection import TrackerPeer, log
from .history import WEEK
from .records import QueueChanged
from .store.records import HistoryQuery

MAX_REPORT_ROWS = 200_000
"""History rows one usage report reads at most, as many as the tracker's memory keeps:
the report is added up on the reactor thread, so a long window on a busy tracker is cut
at the newest rows here (the answer's C{history} says so) rather than stall everyone.
C{bench/accounting.py} times it."""


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
        now = self._now
        rows, source = yield self.tracker.history_rows(
            HistoryQuery(user=only, key=key, since=now - window, until=now + 1),
            MAX_REPORT_ROWS)
        now = self._now
        scheduler = self._scheduler
        rows = list(rows) + [
            held_row(lease, now) for lease in scheduler.leases.values()
            if (key is None or lease.request.key == key)
            and (only is None or lease.user == only)]
        standings: dict[str, dict[str, Standing]] | None = None
        if scheduler.fair_share and by in ("user", "account"):
            # everyone fair share weighs: usage on record, waiting, or used in the window
            known: dict[str, set[str]] = {}
            for row in rows:
                known.setdefault(row.key, set()).add(row.user)
            for k in set(scheduler.usage_keys()) | set(scheduler.keys()):
                known.setdefault(k, set()).update(
                    scheduler.usage_users(k), (r.user for r in scheduler.waiting(k, now)))
            standings = {
                k: {u: Standing(scheduler.share(u), scheduler.usage(k, u, now))
                    for u in users}
                for k, users in known.items() if users and (key is None or k == key)}
        accounts = {i.user: i.account for i in (self.tracker.access.tokens or {}).values()
                    if i.account is not None}
        report = usage_report(rows, now - window, now, by, standings, accounts)
        if only is not None:
            mine = only if by != "account" else accounts.get(only, only)
            if by in ("user", "account"):
                report = [r for r in report if r["name"] == mine]
        return {"rows": report[start:start + limit], "more": len(report) > start + limit,
                "half_life": scheduler.policy.fair_share_half_life, "since": window,
                "history": source}

    @pa.ResetUsage.responder
    def reset_usage(self, user: str | None = None) -> dict[str, Any]:
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
        return {"keys": had}

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


__all__ = ["ReportResponders", "memory_note"]
