"""The accounting core: the memory history answers a query as the store does, and a usage
report adds up board time the same way whatever it is grouped by."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compassd.tracker.accounting import RecentHistory, Standing, usage_groups, usage_report
from compassd.tracker.store import HistoryQuery, HistoryRow, UsageQuery
from compassd.tracker.store.records import Batch
from compassd.tracker.store.sqlite import SqliteStore

USERS = ("ann", "bob", "cat")
DEVICES = ("npu-1", "npu-2")
KEYS = ("x2", "x3")


@st.composite
def rows(draw: st.DrawFn) -> list[HistoryRow]:
    made = []
    for i in range(draw(st.integers(0, 40))):
        requested = draw(st.integers(0, 1000)) / 2
        waited = draw(st.integers(0, 100)) / 2
        held = draw(st.integers(0, 200)) / 2
        granted = draw(st.booleans())
        made.append(HistoryRow(
            id=f"r{i:03d}", user=draw(st.sampled_from(USERS)),
            key=draw(st.sampled_from(KEYS)), requested_at=requested,
            ended_at=requested + waited + (held if granted else 0.0),
            outcome="released" if granted else "cancelled",
            granted_at=requested + waited if granted else None,
            device=draw(st.sampled_from(DEVICES)) if granted else None))
    return made


queries = st.builds(
    HistoryQuery,
    user=st.none() | st.sampled_from(USERS), device=st.none() | st.sampled_from(DEVICES),
    key=st.none() | st.sampled_from(KEYS),
    since=st.none() | st.integers(0, 1200).map(float),
    until=st.none() | st.integers(0, 1200).map(float),
    limit=st.integers(1, 12))


def reference(made: list[HistoryRow], query: HistoryQuery) -> list[HistoryRow]:
    """What the store's SQL says, written plainly."""
    keep = [r for r in made
            if (query.user is None or r.user == query.user)
            and (query.device is None or r.device == query.device)
            and (query.key is None or r.key == query.key)
            and (query.since is None or r.ended_at >= query.since)
            and (query.until is None or r.ended_at < query.until)
            and (query.before is None or (r.ended_at, r.id) < query.before)]
    return sorted(keep, key=lambda r: (r.ended_at, r.id), reverse=True)


def pages(source: object, query: HistoryQuery) -> list[HistoryRow]:
    """Every row C{query} matches, read page by page with the cursor."""
    got: list[HistoryRow] = []
    before = None
    for _ in range(100):
        page = source.history(HistoryQuery(  # type: ignore[attr-defined]
            query.user, query.device, query.key, query.since, query.until, before,
            query.limit))
        got += page
        if len(page) < query.limit:
            return got
        before = (page[-1].ended_at, page[-1].id)
    raise AssertionError("paging never ended")


@given(rows(), queries)
def test_memory_history_pages_through_exactly_the_rows_the_store_would(
    made: list[HistoryRow], query: HistoryQuery,
) -> None:
    memory = RecentHistory()
    for row in sorted(made, key=lambda r: r.requested_at):  # arrival order, not end order
        memory.add(row)
    expected = reference(made, query)
    assert memory.history(query) == expected[:query.limit]
    assert pages(memory, query) == expected


@settings(max_examples=15)
@given(rows(), queries)
def test_memory_history_agrees_with_a_real_sqlite_store(
    tmp_path_factory: pytest.TempPathFactory, made: list[HistoryRow], query: HistoryQuery,
) -> None:
    path: Path = tmp_path_factory.mktemp("store") / "tracker.sqlite"
    store = SqliteStore(str(path))
    store.open()
    try:
        store.load()
        store.write(Batch(history=list(made)))
        memory = RecentHistory()
        for row in made:
            memory.add(row)
        assert pages(memory, query) == pages(store, query)
    finally:
        store.close()
        store.release_lock()


def test_memory_history_keeps_only_the_newest_rows() -> None:
    memory = RecentHistory(limit=3)
    for i in range(5):
        memory.add(HistoryRow(f"r{i}", "ann", "x2", float(i), float(i), "cancelled"))
    assert [r.id for r in memory.history(HistoryQuery())] == ["r4", "r3", "r2"]


@given(rows(), st.integers(0, 600).map(float), st.integers(1, 800).map(float))
def test_every_grouping_adds_up_to_the_same_board_hours_and_leases(
    made: list[HistoryRow], since: float, span: float,
) -> None:
    until = since + span
    totals = {}
    for by in ("user", "account", "key", "device"):
        accounts = {"ann": "lab", "bob": "lab"}
        groups = usage_groups(made, UsageQuery(since, until, by,
                                               accounts=tuple(accounts.items())))
        report = usage_report(groups, by, accounts=accounts)
        totals[by] = (pytest.approx(sum(r["hours"] for r in report)),
                      sum(r["leases"] for r in report))
    assert totals["user"] == totals["account"] == totals["key"] == totals["device"]
    inside = sum(max(0.0, min(r.ended_at, until) - max(r.granted_at, since))
                 for r in made if r.granted_at is not None)
    assert totals["key"][0] == pytest.approx(inside / 3600)


@given(st.dictionaries(st.sampled_from(USERS),
                       st.tuples(st.integers(1, 4).map(float), st.integers(0, 100).map(float)),
                       min_size=1))
def test_the_order_is_by_decayed_usage_per_share(users: dict[str, tuple[float, float]]) -> None:
    standings = {"x2": {u: Standing(share, used) for u, (share, used) in users.items()}}
    report = usage_report([], "user", standings)
    ranked = sorted(report, key=lambda r: r["order"])
    assert [r["order"] for r in ranked] == list(range(1, len(users) + 1))
    assert all(r["of"] == len(users) for r in report)
    per_share = [r["decayed"] / r["share"] for r in ranked]
    assert per_share == sorted(per_share)
