"""The dashboard's history read from a real SQLite store, plus the tracker's memory."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, succeed

from compassd.tracker.history import LeaseSpan, MemoryHistory, WaitSample, summarise
from compassd.tracker.store import Batch, HistoryQuery, HistoryRow
from compassd.tracker.store.sqlite import SqliteStore
from compassd.tracker.web.stored import StoredHistory, from_rows

NOW = 10 * 86400.0


def lease(n: int, device: str, user: str, requested: float, granted: float,
          ended: float) -> HistoryRow:
    return HistoryRow(id=f"lease-{n}", user=user, key="x2", requested_at=requested,
                      ended_at=ended, outcome="released", granted_at=granted, device=device,
                      request_id=f"req-{n}")


def test_rows_become_leases_and_waits_and_ungranted_requests_are_left_out() -> None:
    rows = [lease(1, "npu-1", "alice", 90.0, 100.0, 400.0),
            HistoryRow(id="req-7", user="bob", key="x2", requested_at=0.0, ended_at=60.0,
                       outcome="timed-out")]
    assert from_rows(rows) == ([LeaseSpan("npu-1", "x2", "alice", 100.0, 400.0, "lease-1")],
                               [WaitSample("x2", 100.0, 10.0, "lease-1")])


def test_history_survives_in_the_store_and_memory_adds_what_came_since(
    tmp_path: Path,
) -> None:
    store = SqliteStore(str(tmp_path / "state.sqlite"))
    store.open()
    store.load()
    # A day ago, before this tracker started: two leases, one more than a week old.
    store.write(Batch(history=[
        lease(1, "npu-1", "alice", NOW - 86400, NOW - 86400 + 60, NOW - 86400 + 3660),
        lease(2, "npu-2", "bob", NOW - 8 * 86400, NOW - 8 * 86400, NOW - 8 * 86400 + 60),
    ]))

    def read(query: HistoryQuery) -> Deferred[list[HistoryRow]]:
        return succeed(store.history(query))

    memory = MemoryHistory()
    memory._open["lease-9"] = LeaseSpan("npu-2", "x2", "carl", NOW - 1800, None, "lease-9")
    memory._waits.append(WaitSample("x2", NOW - 1800, 5.0, "lease-9"))
    history = StoredHistory(read, memory)
    history.refresh(NOW)
    assert history.loaded_at == NOW
    summary = summarise(history, NOW - 86400, NOW, 24, {"npu-1": "x2", "npu-2": "x2"})
    assert summary.hours_by_user == {"alice": 1.0, "carl": 0.5}
    assert summary.waits["x2"]["count"] == 2 and summary.waits["x2"]["max"] == 60.0
    # A lease that ended in memory before the store was read is in the store's copy:
    # it is not counted twice.
    memory._ended.append(LeaseSpan("npu-1", "x2", "alice", NOW - 86400 + 60,
                                   NOW - 86400 + 3660, "lease-1"))
    memory._waits.append(WaitSample("x2", NOW - 86400 + 60, 60.0, "lease-1"))
    again = summarise(history, NOW - 86400, NOW, 24, {})
    assert again.hours_by_user["alice"] == 1.0 and again.waits["x2"]["count"] == 2
    store.close()


def test_a_store_that_cannot_be_read_keeps_the_last_copy() -> None:
    calls = []

    def read(query: HistoryQuery) -> Deferred[list[HistoryRow]]:
        calls.append(query)
        if len(calls) > 1:
            raise OSError("disk gone")
        return succeed([lease(1, "npu-1", "alice", 0.0, 10.0, 20.0)])

    history = StoredHistory(read, MemoryHistory())
    history.refresh(100.0)
    history.refresh(200.0)
    assert history.loaded_at == 100.0
    assert history.leases(0.0, 300.0) == [
        LeaseSpan("npu-1", "x2", "alice", 10.0, 20.0, "lease-1")]
