"""An answer that tells a client something a restart must keep goes out only once the
store has committed it (compassd.tracker.clients, admin and reports, through
L{Journal.written}), and never waits on a store that is failing or stuck.

A real SQLite file; the store's writes run when the test says so (L{Held}), so a test
sees the answer wait for the commit, and what is in the file when the answer arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher

from compassd.protocol import accounting as pa
from compassd.protocol import client_tracker as ct
from compassd.tracker import persist
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.store import HistoryQuery, Journal
from compassd.tracker.store.sqlite import SqliteStore

from .store.test_journal import Held, synchronous
from .test_service import Conn, Harness


class Tracker:
    """A tracker on a Clock journaling into a real SQLite file, its writes held."""

    def __init__(self, path: Path, run: Any = None) -> None:
        self.store = SqliteStore(str(path))
        self.store.open()
        self.held = Held()
        self.h = Harness(scheduler=Scheduler(policy=Policy(claim_timeout=None)),
                         heartbeat_timeout=1e9, idle_timeout=None)
        tracker = self.h.tracker
        self.journal = Journal(self.store, self.h.clock,
                               lambda: persist.live_state(tracker.scheduler),
                               run=run or self.held, retention=None)
        tracker.journal = self.journal
        self.journal.start()

    def write_all(self) -> None:
        """Let the store write everything the tracker recorded so far."""
        for _ in range(20):
            self.h.flush()
            if not self.held.waiting:
                return
            self.held.finish_one()
        raise AssertionError("the journal never stopped writing")

    def send(self, conn: Conn, command: Any, **kw: Any) -> list[Any]:
        """Send a command; the list gets its answer (or Failure) when it comes."""
        results: list[Any] = []
        conn.peer.callRemote(command, **kw).addBoth(results.append)
        self.h.flush()
        return results

    def stored_requests(self) -> list[str]:
        return [r.id for r in self.store.load().live.requests]

    def close(self) -> None:
        self.store.release_lock()


def log_lines() -> tuple[list[str], Any]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "compass.tracker.store":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    return lines, observe


def test_a_queued_request_is_answered_once_the_store_has_it_and_its_grant_follows(
        tmp_path: Path) -> None:
    t = Tracker(tmp_path / "tracker.sqlite")
    t.h.board("npu-1")
    holder = t.h.connect(user="carol")
    holder.ok(ct.Request, key="npu")  # granted at once: the answer does not wait
    lease = holder.peer.take("granted")[0][1]["lease"]
    t.write_all()
    waiter = t.h.connect(user="bob")
    order: list[str] = []
    waiter.peer._record = lambda name, kw: (order.append(name), {})[1]  # type: ignore

    answer = t.send(waiter, ct.Request, key="npu")

    assert answer == [] and len(t.held.waiting) == 1  # the commit is on its way
    assert t.stored_requests() == []
    # The holder releases meanwhile: bob is granted in memory at once, but the notice
    # waits behind the answer bob has not had.
    released = t.send(holder, ct.Release, lease=lease)
    assert released == [] and order == []

    t.held.finish_one()  # the request's batch is committed
    t.h.flush()

    request = answer[0]["request"]
    assert answer[0]["position"] == 0 and t.stored_requests() == [request]
    assert released == []  # its own batch (the release and the grant) is not written yet
    assert order == ["granted"]  # after the answer
    t.write_all()
    assert released == [{}]
    assert t.stored_requests() == []
    assert [x.request_id for x in t.store.load().live.leases] == [request]
    t.close()


def test_release_cancel_drain_and_a_usage_reset_wait_for_the_store_too(
        tmp_path: Path) -> None:
    t = Tracker(tmp_path / "tracker.sqlite")
    t.h.board("npu-1", "npu-2")
    ann = t.h.connect(user="ann")
    ann.ok(ct.Request, key="npu")
    ann.ok(ct.Request, key="npu")
    t.write_all()
    queued = t.send(ann, ct.Request, key="npu")
    t.write_all()
    admin = t.h.connect("admin", user="root")

    for conn, command, kw in [
        (ann, ct.Cancel, {"request": queued[0]["request"]}),
        (admin, ct.Drain, {"device": "npu-2"}),
        (admin, ct.Undrain, {"device": "npu-2"}),
        (admin, pa.ResetUsage, {}),
    ]:
        answer = t.send(conn, command, **kw)
        assert answer == [] and len(t.held.waiting) == 1, command.__name__
        t.write_all()
        assert len(answer) == 1 and not hasattr(answer[0], "raiseException"), answer

    leases = [x.id for x in t.store.load().live.leases]
    t.h.advance(1.0)
    released = t.send(ann, ct.Release, lease=leases[0])
    assert released == []
    t.write_all()
    assert released == [{}]
    assert [x.id for x in t.store.load().live.leases] == leases[1:]
    assert [r.outcome for r in t.store.history(HistoryQuery())] == ["released", "cancelled"]
    t.close()


def test_a_stuck_store_holds_answers_for_answer_wait_then_none_until_it_writes(
        tmp_path: Path) -> None:
    t = Tracker(tmp_path / "tracker.sqlite")
    t.h.board("npu-1")
    holder = t.h.connect(user="carol")
    holder.ok(ct.Request, key="npu")
    t.write_all()
    lines, observer = log_lines()
    try:
        bob = t.h.connect(user="bob")
        first = t.send(bob, ct.Request, key="npu")  # its write never finishes (yet)
        t.h.advance(t.journal.answer_wait * 0.99)
        assert first == []

        t.h.advance(t.journal.answer_wait * 0.02)

        assert len(first) == 1 and first[0]["position"] == 0
        stuck = [line for line in lines if "has not finished a write" in line]
        assert stuck == [
            f"The tracker's store {t.store.path} has not finished a write in"
            f" {t.journal.answer_wait:g} s; the tracker answers without waiting for it"
            " and keeps scheduling from memory (what it has not written is lost if the"
            " tracker stops before the store catches up)."]
        # While it is stuck, answers go out at once, and it is said only once.
        second = t.send(t.h.connect(user="dan"), ct.Request, key="npu")
        assert len(second) == 1 and second[0]["position"] == 1
        assert len([line for line in lines if "has not finished a write" in line]) == 1

        t.write_all()  # the disk comes back: the stuck write and the next are done
        assert any("answers wait for the store again" in line for line in lines)
        assert set(t.stored_requests()) == {first[0]["request"], second[0]["request"]}
        third = t.send(t.h.connect(user="eve"), ct.Request, key="npu")
        assert third == []  # waiting for the store again
        t.write_all()
        assert len(third) == 1
    finally:
        globalLogPublisher.removeObserver(observer)
    t.close()


def test_a_failing_store_does_not_hold_answers(tmp_path: Path) -> None:
    t = Tracker(tmp_path / "tracker.sqlite", run=synchronous)
    t.h.board("npu-1")
    holder = t.h.connect(user="carol")
    holder.ok(ct.Request, key="npu")
    t.h.flush()
    # The file refuses writes (until the journal opens it again, after a second).
    t.store._conn.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]
    bob = t.h.connect(user="bob")

    # The write of the request fails in the turn that queued it: the answer goes out
    # in that turn, with no time passing, and so do the next ones.
    answers = [t.send(bob, ct.Request, key="npu") for i in range(3)]

    assert t.journal.problem is not None and "readonly" in t.journal.problem
    assert [len(a) for a in answers] == [1, 1, 1]
    assert [a[0]["position"] for a in answers] == [0, 1, 2]
    assert t.h.clock.seconds() == 0
    t.close()
