"""The journal (compassd.tracker.store.journal): batched per reactor turn, written off
the reactor thread, catching up after the store fails."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from compassd.tracker.store import (
    HistoryQuery,
    Journal,
    LiveState,
    StoreError,
)
from compassd.tracker.store.postgresql import PostgresStore
from compassd.tracker.store.sqlite import SqliteStore
from tests.postgres import postgres_server

from .test_sql import T0, device, ended, lease, request


def synchronous(call: Callable[[], Any]) -> Deferred[Any]:
    return maybeDeferred(call)


class Held:
    """Runs each write only when the test says so (to see batches form meanwhile)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, call: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((call, d))
        return d

    def finish_one(self) -> None:
        call, d = self.waiting.pop(0)
        d.callback(call())


@pytest.fixture
def errors():
    """The error lines the journal logs."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "compass.tracker.store" and \
                event["log_level"].name in ("error", "critical"):
            seen.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def sqlite_store(tmp_path):
    store = SqliteStore(str(tmp_path / "tracker.sqlite"))
    store.open()
    yield store
    store.release_lock()


def test_the_changes_of_one_turn_are_written_in_one_batch_at_its_end(sqlite_store):
    clock = Clock()
    journal = Journal(sqlite_store, clock, LiveState, run=synchronous, retention=None)
    journal.start()
    journal.put_device(device())
    journal.put_request(request())
    journal.drop_request(request().id)
    journal.put_lease(lease())
    journal.add_history(ended("req-1.0", granted_at=None, outcome="cancelled"))
    assert journal.writes == 0  # nothing during the turn

    clock.advance(0)

    assert journal.writes == 1
    live = sqlite_store.load().live
    assert (live.devices, live.requests, live.leases) == ((device(),), (), (lease(),))
    assert [r.id for r in sqlite_store.history(HistoryQuery())] == ["req-1.0"]


def test_changes_made_while_a_batch_is_written_go_together_in_the_next(sqlite_store):
    clock, held = Clock(), Held()
    journal = Journal(sqlite_store, clock, LiveState, run=held, retention=None)
    journal.start()
    journal.put_device(device())
    clock.advance(0)
    assert len(held.waiting) == 1
    for i in range(50):  # fifty turns while the first batch is on its way
        journal.add_history(ended(f"lease-1.{i}"))
        clock.advance(0)
    assert len(held.waiting) == 1
    idle = journal.idle()

    held.finish_one()
    clock.advance(0)
    assert len(held.waiting) == 1
    held.finish_one()

    assert journal.writes == 2 and idle.called
    assert len(sqlite_store.history(HistoryQuery(limit=1000))) == 50


def test_a_full_disk_is_reported_once_and_the_store_caught_up_when_it_has_room(
        sqlite_store, errors):
    clock = Clock()
    memory = {"live": LiveState()}
    journal = Journal(sqlite_store, clock, lambda: memory["live"], run=synchronous,
                      retention=None)
    journal.start()
    journal.put_device(device("npu-0"))
    clock.advance(0)
    # SQLite's own limit on the file's pages fails a write as a full disk does.
    pages = sqlite_store._conn.execute("PRAGMA page_count").fetchone()[0]
    sqlite_store._conn.execute(f"PRAGMA max_page_count = {pages}")

    for i in range(40):  # the tracker goes on in one turn; the batch cannot be written
        journal.add_history(ended(f"lease-1.{i}", detail="x" * 200))
    memory["live"] = LiveState(devices=(device("npu-1"),), leases=(lease(device="npu-1"),))
    clock.advance(0)

    assert errors == [
        f"The tracker's store {sqlite_store.path} could not save the tracker's state:"
        " database or disk is full. The tracker keeps scheduling from memory and will"
        " bring the store up to date when it can."]
    assert journal.problem is not None and not journal.idle().called

    # The retry opens the store again (here: without the limit) and writes the
    # tracker's whole live state and every history row it kept.
    clock.advance(journal.retry_initial)

    assert journal.problem is None and journal.idle().called
    assert sqlite_store.load().live == memory["live"]
    assert len(sqlite_store.history(HistoryQuery(limit=1000))) == 40


def test_a_store_damaged_while_down_is_retried_until_it_is_moved_away(tmp_path, errors):
    path = str(tmp_path / "tracker.sqlite")
    store = SqliteStore(path)
    store.open()
    clock = Clock()
    memory = {"live": LiveState()}
    journal = Journal(store, clock, lambda: memory["live"], run=synchronous,
                      retention=None)
    journal.start()
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(40):
        journal.add_history(ended(f"lease-1.{i}", detail="x" * 200))
    clock.advance(0)
    assert journal.problem is not None  # the journal closed the store to open it again
    with open(path, "r+b") as f:
        f.write(b"\0garbage" * 512)

    for _ in range(5):
        clock.advance(journal.retry_max)
    assert len(errors) == 2  # the full disk, then the damage: each said once
    assert errors[1].startswith(f"The tracker's store {path} is damaged")
    assert "restore it from a backup, or move it away" in errors[1]

    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, path + suffix + ".damaged")
    memory["live"] = LiveState(devices=(device("npu-2"), device("npu-3")),
                               leases=(lease(device="npu-3"),))
    clock.advance(journal.retry_max)

    assert journal.problem is None and journal.idle().called
    assert store.load().live == memory["live"]
    assert len(store.history(HistoryQuery(limit=1000))) == 40
    store.release_lock()


def test_a_postgresql_that_goes_away_and_comes_back_is_caught_up(errors):
    server = postgres_server()
    try:
        store = PostgresStore(server.create_database("journal"), connect_timeout=1)
        store.open()
        clock = Clock()
        memory = {"live": LiveState(devices=(device(),))}
        journal = Journal(store, clock, lambda: memory["live"], run=synchronous,
                          retention=None)
        journal.start()
        journal.put_device(device())
        clock.advance(0)
        server.stop()

        journal.put_request(request())
        journal.add_history(ended("lease-1.1"))
        clock.advance(0)
        assert journal.problem is not None
        assert "could not save the tracker's state" in journal.problem
        assert len(errors) == 1

        server.start()
        memory["live"] = LiveState(devices=(device(drained=True),),
                                   requests=(request(),))
        for _ in range(10):  # the backoff grows to its maximum; each retry is bounded
            if journal.problem is None:
                break
            clock.advance(journal.retry_max)
        assert journal.problem is None
        assert store.load().live == memory["live"]
        assert [r.id for r in store.history(HistoryQuery())] == ["lease-1.1"]
        store.close()
    finally:
        server.remove()


def test_history_older_than_the_retention_is_pruned_in_the_background(sqlite_store):
    clock = Clock()
    clock.advance(T0 + 100 * 86400)
    journal = Journal(sqlite_store, clock, LiveState, run=synchronous,
                      retention=90 * 86400.0, prune_every=3600)
    journal.add_history(ended("old", ended_at=clock.seconds() - 91 * 86400))
    journal.add_history(ended("young", ended_at=clock.seconds() - 89.99 * 86400))
    clock.advance(0)
    journal.start()
    clock.advance(0)
    assert [r.id for r in sqlite_store.history(HistoryQuery())] == ["young"]
    clock.advance(3600)  # "young" is now past 90 days: the hourly prune takes it
    assert sqlite_store.history(HistoryQuery()) == []


class ThreadNoting(SqliteStore):
    def write(self, batch):
        self.thread = threading.current_thread()
        return super().write(batch)


@pytest_twisted.inlineCallbacks
def test_writes_happen_in_the_store_thread_never_the_reactors(tmp_path):
    store = ThreadNoting(str(tmp_path / "tracker.sqlite"))
    store.open()
    journal = Journal(store, real_reactor, LiveState, retention=None)
    journal.start()
    try:
        journal.put_device(device())
        yield journal.idle()
        assert store.thread is not threading.current_thread()
        assert "compass-store" in store.thread.name
    finally:
        yield journal.stop()
    assert store._conn is None  # closed at stop
    store.release_lock()


def test_a_store_that_cannot_be_opened_raises_a_sentence(tmp_path):
    (tmp_path / "tracker.sqlite").write_bytes(b"x" * 4096)
    with pytest.raises(StoreError):
        SqliteStore(str(tmp_path / "tracker.sqlite")).open()


def test_unwritten_history_is_the_batch_being_written_and_the_next_until_written(
    sqlite_store,
):
    clock, held = Clock(), Held()
    journal = Journal(sqlite_store, clock, LiveState, run=held, retention=None)
    journal.add_history(ended("lease-1.1"))
    clock.advance(0)  # the first batch goes to the store's thread, and waits there
    journal.add_history(ended("lease-1.2"))
    assert [r.id for r in journal.unwritten_history()] == ["lease-1.1", "lease-1.2"]
    held.finish_one()
    assert [r.id for r in journal.unwritten_history()] == ["lease-1.2"]
    clock.advance(0)
    held.finish_one()
    assert journal.unwritten_history() == []
    assert [r.id for r in sqlite_store.history(HistoryQuery())] == ["lease-1.2", "lease-1.1"]


@pytest_twisted.inlineCallbacks
def test_a_long_report_reads_on_its_own_connection_and_holds_up_no_write(tmp_path):
    store = SqliteStore(str(tmp_path / "tracker.sqlite"))
    store.open()
    journal = Journal(store, real_reactor, LiveState, retention=None)
    journal.start()
    inside, let_go = threading.Event(), threading.Event()
    seen: list[Any] = []

    def slow_report(reader: Any) -> list[Any]:
        seen.append((reader is not store, threading.current_thread().name))
        inside.set()
        let_go.wait(30)  # the test lets it go once the write below is done
        return reader.history(HistoryQuery(limit=10))

    try:
        journal.put_device(device())
        yield journal.idle()
        report = journal.report(slow_report)
        yield deferToThread(inside.wait, 30)
        journal.add_history(ended("lease-1"))
        yield journal.idle()  # written while the report still runs
        assert not report.called
        let_go.set()
        rows = yield report
        ((own_connection, thread),) = seen
        assert own_connection and "compass-store-reports" in thread, seen
        assert [r.id for r in rows] == ["lease-1"]
    finally:
        let_go.set()
        yield journal.stop()
    assert store._conn is None and journal._reader._conn is None  # both closed at stop
    store.release_lock()
