"""A usage report added up by the store (compassd.tracker.store._report in SQL, and
_rollup from per-period sums) gives the numbers the plain Python of
compassd.tracker.accounting.usage_groups gives over the same rows, on SQLite and on
PostgreSQL: exactly, but for the waits' percentiles of a window with a whole period in
it, which are those of the waits' buckets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compassd.tracker.accounting import usage_groups
from compassd.tracker.store import Batch, HistoryRow, IStore, UsageGroup, UsageQuery
from compassd.tracker.store._report import statement
from compassd.tracker.store.records import GROUPINGS
from compassd.tracker.store.sqlite import SqliteStore
from compassd.tracker.store.tally import bucket, bucket_value

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


PERIOD = 10.0
"""The sums' period in these tests: seconds, so that windows of 0-60 s hold whole ones."""


def expected(rows: Sequence[HistoryRow], query: UsageQuery) -> list[UsageGroup]:
    """What the store should answer: the plain Python's groups, with the waits'
    percentiles in buckets when the window holds a whole period (and the report is not
    by device for one user, which the sums cannot answer)."""
    exact = usage_groups(rows, query)
    if math.floor(query.until / PERIOD) <= math.ceil(query.since / PERIOD) or (
            query.by == "device" and query.user is not None):
        return exact

    def rounded(wait: float | None) -> float | None:
        return None if wait is None else bucket_value(bucket(wait))

    return [attrs.evolve(g, wait_p50=rounded(g.wait_p50), wait_p95=rounded(g.wait_p95))
            for g in exact]


def same(got: list[UsageGroup], expected: list[UsageGroup]) -> None:
    assert [attrs.evolve(g, seconds=0.0) for g in got] == [
        attrs.evolve(g, seconds=0.0) for g in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.seconds == pytest.approx(e.seconds, rel=1e-12, abs=1e-9)


@pytest.fixture
def store(make_store: Callable[[], IStore]) -> IStore:
    """An open store, on SQLite and on PostgreSQL."""
    opened = make_store()
    opened.report_period = PERIOD
    opened.open()
    opened.load()
    return opened


def _sums(store: IStore) -> int:
    cur = store._conn.cursor()  # type: ignore[attr-defined]
    cur.execute("SELECT count(*) FROM compass_report_periods")
    return int(cur.fetchall()[0][0])


def test_the_database_adds_up_a_report_as_plain_python_does(store: IStore) -> None:
    @settings(max_examples=150, deadline=None)
    @given(report=reports(), split=st.integers(0, 30), again=st.integers(0, 30),
           pruned=st.none() | halves(0, 100))
    def agree(report: tuple[list[HistoryRow], UsageQuery], split: int, again: int,
              pruned: float | None) -> None:
        stored, query = report
        store.prune(math.inf)
        assert _sums(store) == 0  # what pruning takes away leaves no sums behind
        # written in two batches, with some rows written twice (they count once)
        store.write(Batch(history=stored[:split]))
        store.write(Batch(history=stored[max(0, split - again):]))
        kept = stored
        if pruned is not None:
            store.prune(pruned)
            kept = [r for r in stored if r.ended_at >= pruned]
        same(store.usage(query), expected(kept, query))

    agree()


def test_a_long_lease_from_before_the_window_counts_its_part_inside(store: IStore) -> None:
    """A lease requested 50 periods before the window and ended inside it counts from
    the window's start (the longest span bounds where such rows are looked for)."""
    rows = [
        HistoryRow(id="long", user="ann", key="x2", requested_at=5.0, granted_at=7.0,
                   ended_at=555.0, outcome="released", device="npu-1"),
        HistoryRow(id="short", user="ann", key="x2", requested_at=521.0, granted_at=523.0,
                   ended_at=524.0, outcome="released", device="npu-1"),
    ]
    store.write(Batch(history=rows))
    query = UsageQuery(since=500.0, until=560.0)
    [group] = store.usage(query)
    assert (group.leases, group.seconds, group.waits) == (2, 56.0, 1)
    same([group], expected(rows, query))


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


def test_a_store_opened_with_another_period_fills_its_sums_again(
        make_store: Callable[[], IStore]) -> None:
    rows = [
        HistoryRow(id=f"r{i}", user=("ann", "bob")[i % 2], key="x2",
                   requested_at=3.0 * i, granted_at=3.0 * i + 0.5 * (i % 5),
                   ended_at=3.0 * i + 2.5, outcome="released", device="npu-1")
        for i in range(40)
    ]
    first = make_store()
    first.report_period = PERIOD
    first.open()
    first.write(Batch(history=rows))
    query = UsageQuery(since=7.0, until=101.0)
    same(first.usage(query), expected(rows, query))

    again = make_store()
    again.report_period = 20.0  # whole periods 20..100 now, not 10..100
    again.open()
    cur = again._conn.cursor()  # type: ignore[attr-defined]
    cur.execute("SELECT min(period), max(period) FROM compass_report_periods")
    assert tuple(cur.fetchall()[0]) == (0, 5)  # requested at 0..117 s, in periods of 20 s
    same(again.usage(query), expected(rows, query))
