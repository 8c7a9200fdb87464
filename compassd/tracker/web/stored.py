"""The dashboard's history from the durable store (L{compassd.tracker.store}).

L{StoredHistory} is a L{HistorySource}: it reads the last week of ended leases from the
store off the reactor (C{read}, for example the journal's own thread) every few minutes,
and adds what the tracker's memory knows since that read, and the leases held now. So
the charts survive a restart of the tracker, and drawing them never waits on a disk.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from ..history import WEEK, LeaseSpan, MemoryHistory, WaitSample
from ..store import HistoryQuery, HistoryRow

log = Logger(namespace="compass.dashboard")

PAGE = 5000


def from_rows(rows: Iterable[HistoryRow]) -> tuple[list[LeaseSpan], list[WaitSample]]:
    """The leases and the waits before each grant in C{rows} (requests that ended
    without a grant waited, but not for a grant: they are left out)."""
    spans: list[LeaseSpan] = []
    waits: list[WaitSample] = []
    for row in rows:
        if row.granted_at is None or row.device is None:
            continue
        spans.append(LeaseSpan(row.device, row.key, row.user, row.granted_at, row.ended_at,
                               row.id))
        waits.append(WaitSample(row.key, row.granted_at, row.waited, row.id))
    return spans, waits


@attrs.define(eq=False)
class StoredHistory:
    """The store's last week, refreshed by L{refresh}, plus the tracker's memory since."""

    read: Callable[[HistoryQuery], Deferred[list[HistoryRow]]]
    memory: MemoryHistory
    max_rows: int = 200_000
    _spans: list[LeaseSpan] = attrs.Factory(list)
    _waits: list[WaitSample] = attrs.Factory(list)
    _ids: frozenset[str] = frozenset()
    _loaded_at: float | None = None
    _loading: bool = False

    @property
    def loaded_at(self) -> float | None:
        """When the store was last read (None: never yet)."""
        return self._loaded_at

    @inlineCallbacks
    def refresh(self, now: float) -> Generator[Deferred[Any], Any, None]:
        """Read the leases that ended in the week before C{now}, newest first, page by
        page; keep the old copy if the store cannot be read (and say so in the log)."""
        if self._loading:
            return
        self._loading = True
        rows: list[HistoryRow] = []
        before: tuple[float, str] | None = None
        try:
            while len(rows) < self.max_rows:
                page = yield self.read(HistoryQuery(since=now - WEEK, until=now,
                                                    before=before, limit=PAGE))
                rows += page
                if len(page) < PAGE:
                    break
                before = (page[-1].ended_at, page[-1].id)
        except Exception as e:
            log.warn("the dashboard could not read history from the store: {why}; it"
                     " shows what it read before", why=str(e))
            return
        finally:
            self._loading = False
        self._spans, self._waits = from_rows(rows)
        self._ids = frozenset(span.lease for span in self._spans)
        self._loaded_at = now

    def leases(self, since: float, until: float) -> list[LeaseSpan]:
        """The store's leases, and those in memory that the store did not have yet
        (told apart by lease id)."""
        spans = [s for s in self._spans if s.start < until and (s.end or until) > since]
        spans += [s for s in self.memory.leases(since, until) if s.lease not in self._ids]
        return spans

    def waits(self, since: float, until: float) -> list[WaitSample]:
        samples = [w for w in self._waits if since <= w.at < until]
        samples += [w for w in self.memory.waits(since, until) if w.lease not in self._ids]
        return samples
