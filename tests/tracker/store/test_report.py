"""A usage report added up in SQL (compassd.tracker.store._report) gives the numbers the
plain Python of compassd.tracker.accounting.usage_groups gives over the same rows, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compassd.tracker.accounting import usage_groups
from compassd.tracker.store import Batch, HistoryRow, IStore, UsageGroup, UsageQuery
from compassd.tracker.store._report import statement
from compassd.tracker.store.records import GROUPINGS
from compassd.tracker.store.sqlite import SqliteStore

USERS = ("ann", "bob", "cat", "dan")
DEVICES = ("npu-1", "npu-2", "npu-3")
KEYS = ("x2", "x3")
ACCOUNTS = (("ann", "lab"), ("bob", "lab"), ("cat", "ops"))


def halves(low: int, high: int) -> st.SearchStrategy[float]:
    """Times on a half-second grid, so that many of them are equal (the edges)."""
    return st.integers(low, high).map(lambda n: n / 2)


@st.composite
def history(draw: st.DrawFn, prefix: str = "r", most: int = 30) -> list[HistoryRow]:
    made = []
    for i in range(draw(st.integers(0, most))):
        requested = draw(halves(0, 80))
        waited = draw(halves(0, 8))
        held = draw(st.sampled_from([0.0, 0.5]) | halves(0, 30))
        granted = draw(st.booleans())
        made.append(HistoryRow(
            id=f"{prefix}{i:03d}", user=draw(st.sampled_from(USERS)),
            key=draw(st.sampled_from(KEYS)), requested_at=requested,
            ended_at=requested + waited + (held if granted else 0.0),
            outcome="released" if granted else "cancelled",
            granted_at=requested + waited if granted else None,
            device=draw(st.sampled_from(DEVICES)) if granted else None))
    return made


@st.composite
def reports(draw: st.DrawFn) -> tuple[list[HistoryRow], UsageQuery]:
    stored = draw(history())
    since = draw(halves(0, 100))
    until = since + draw(st.just(0.0) | halves(0, 60))
    extra = draw(history(prefix="x", most=6))
    # leases held now: granted before the window's end, ending at it
    extra = [attrs.evolve(r, ended_at=until, outcome="held")
             for r in extra if r.granted_at is not None and r.granted_at <= until]
    # and rows the store has too (a row written while the report was asked for)
    extra += draw(st.lists(st.sampled_from(stored), max_size=3)) if stored else []
    query = UsageQuery(
        since=since, until=until, by=draw(st.sampled_from(GROUPINGS)),
        user=draw(st.none() | st.sampled_from(USERS)),
        key=draw(st.none() | st.sampled_from(KEYS)),
        accounts=draw(st.sampled_from([(), ACCOUNTS])), extra=tuple(extra))
    return stored, query


def same(got: list[UsageGroup], expected: list[UsageGroup]) -> None:
    assert [attrs.evolve(g, seconds=0.0) for g in got] == [
        attrs.evolve(g, seconds=0.0) for g in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.seconds == pytest.approx(e.seconds, rel=1e-12, abs=1e-9)


@pytest.fixture
def store(make_store: Callable[[], IStore]) -> IStore:
    """An open store, on SQLite and on PostgreSQL."""
    opened = make_store()
    opened.open()
    opened.load()
    return opened


def test_the_database_adds_up_a_report_as_plain_python_does(store: IStore) -> None:
    @settings(max_examples=120, deadline=None)
    @given(report=reports())
    def agree(report: tuple[list[HistoryRow], UsageQuery]) -> None:
        stored, query = report
        store.prune(math.inf)
        store.write(Batch(history=stored))
        same(store.usage(query), usage_groups(stored, query))

    agree()


def test_sqlite_reads_a_report_from_the_covering_index_alone(tmp_path) -> None:
    """The window's rows come from the report index (no table row is read), and a
    history page past a cursor seeks to it rather than scanning from the newest."""
    store = SqliteStore(str(tmp_path / "tracker.sqlite"))
    store.open()
    try:
        for by in GROUPINGS:
            query = UsageQuery(since=0.0, until=1.0, by=by, accounts=ACCOUNTS)
            assert store.usage(query) == []  # (makes the temporary tables)
            sql, args = statement(query, "?", extra=False, accounts=by == "account")
            plan = " | ".join(str(r[3]) for r in store._conn.execute(
                "EXPLAIN QUERY PLAN " + sql, args))
            assert "compass_history USING COVERING INDEX compass_history_report" in plan, plan
        plan = " | ".join(str(r[3]) for r in store._conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM compass_history"
            " WHERE ended_at <= ? AND (ended_at < ? OR id < ?)"
            " ORDER BY ended_at DESC, id DESC LIMIT 51", (1.0, 1.0, "x")))
        assert "USING COVERING INDEX compass_history_page (ended_at<?)" in plan, plan
    finally:
        store.release_lock()
