"""What the tracker shell journals for fair share (compassd.tracker.persist, through
compassd.tracker.service and a real SQLite store): each user's usage when a lease ends,
an admin's reset, and both brought back by a new tracker on the same store."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from compassd.protocol import accounting as pa
from compassd.protocol import client_tracker as ct
from compassd.tracker import persist
from compassd.tracker.audit import AuditLog
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.service import TrackerService
from compassd.tracker.store import Journal
from compassd.tracker.store.sqlite import SqliteStore

from .store.test_journal import synchronous
from .test_answers_kept import Tracker
from .test_service import Harness


def stored(path: Path) -> tuple[Harness, SqliteStore, io.StringIO]:
    """A tracker (on a Clock, at 1000 s) journaling into the SQLite file C{path}."""
    store = SqliteStore(str(path))
    store.open()
    h = Harness(scheduler=Scheduler(policy=Policy(claim_timeout=None)),
                heartbeat_timeout=1e9)  # no board goes silent or leaves a ticket unused
    h.clock.advance(1000)
    tracker = h.tracker
    tracker.journal = Journal(store, h.clock, lambda: persist.live_state(tracker.scheduler),
                              run=synchronous, retention=None)
    tracker.journal.start()
    audit = io.StringIO()
    tracker.audit = AuditLog(stream=audit, clock=h.clock.seconds)
    return h, store, audit


def used(h: Harness, user: str, seconds: float) -> None:
    """C{user} holds a board of key npu (registered by the caller) for C{seconds}."""
    client = h.connect(user=user)
    client.ok(ct.Request, key="npu")
    granted = client.peer.take("granted")[0][1]
    h.advance(seconds)
    client.ok(ct.Release, lease=granted["lease"])
    client.disconnect()


def usage_in(store: SqliteStore) -> dict[tuple[str, str], float]:
    meta = store.load().meta
    return {tuple(json.loads(name[len(persist.USAGE):])): json.loads(value)["seconds"]
            for name, value in meta.items() if name.startswith(persist.USAGE)}


def restarted(store: SqliteStore, at: float) -> TrackerService:
    again = TrackerService(reactor=Harness().clock)
    again.reactor.advance(at)
    again.restore(store.load(), grace=60)
    return again


def test_usage_is_stored_when_a_lease_ends_and_a_new_tracker_brings_it_back(
        tmp_path: Path) -> None:
    h, store, _ = stored(tmp_path / "tracker.sqlite")
    h.board("npu-1")
    used(h, "ann", 100)
    used(h, "bob", 10)
    h.clock.advance(0)  # the journal writes at the end of the turn

    assert usage_in(store) == pytest.approx({("npu", "ann"): 100, ("npu", "bob"): 10},
                                            rel=1e-3)
    again = restarted(store, at=h.clock.seconds() + 60)
    assert again.scheduler.usage("npu", "ann") == pytest.approx(
        h.tracker.scheduler.usage("npu", "ann", h.clock.seconds() + 60))
    assert again.scheduler.usage("npu", "bob") == pytest.approx(10, rel=1e-3)
    store.close()


def test_an_admin_resets_a_users_usage_it_is_stored_and_audited(tmp_path: Path) -> None:
    h, store, audit = stored(tmp_path / "tracker.sqlite")
    h.board("npu-1")
    used(h, "ann", 100)
    used(h, "bob", 50)
    # Bob now waits behind ann's later request only because ann used more: a reset of
    # ann's usage puts her first.
    holder = h.connect(user="carol")
    holder.ok(ct.Request, key="npu")
    lease = holder.peer.take("granted")[0][1]["lease"]
    bob, ann = h.connect(user="bob"), h.connect(user="ann")
    bob_request = bob.ok(ct.Request, key="npu")["request"]
    ann_request = ann.ok(ct.Request, key="npu")["request"]
    positions = h.tracker.scheduler.position
    assert (positions(bob_request), positions(ann_request)) == (0, 1)  # first is 0

    # (Only an admin may: tests/tracker/test_service.py's admin-role test.)
    admin = h.connect("admin", user="root")
    assert admin.ok(pa.ResetUsage, user="ann") == {"keys": ["npu"]}
    h.flush()

    assert (positions(bob_request), positions(ann_request)) == (1, 0)
    h.clock.advance(0)
    assert usage_in(store)[("npu", "ann")] == 0.0
    assert usage_in(store)[("npu", "bob")] == pytest.approx(50, rel=1e-3)
    entry = [json.loads(line) for line in audit.getvalue().splitlines()
             if '"usage-reset"' in line][0]
    assert (entry["user"], entry["target"], entry["keys"]) == ("root", "ann", ["npu"])
    again = restarted(store, at=h.clock.seconds())
    assert again.scheduler.usage("npu", "ann") == 0.0

    assert admin.ok(pa.ResetUsage) == {"keys": ["npu"]}  # everyone's
    h.clock.advance(0)
    assert set(usage_in(store).values()) == {0.0}
    holder.ok(ct.Release, lease=lease)
    h.flush()  # all equal again: bob's request arrived first
    assert bob.peer.take("granted")[0][1]["request"] == bob_request
    store.close()


def test_a_tracker_that_stops_ends_no_lease_and_no_request_in_its_store(
        tmp_path: Path) -> None:
    """A stop (systemctl restart) closes every connection; that is no client going
    away: the store keeps the lease and the waiting request for the next start, even
    when the connections close while a write is on its way."""
    t = Tracker(tmp_path / "tracker.sqlite")
    t.h.board("npu-1")
    carol = t.h.connect(user="carol")
    carol.ok(ct.Request, key="npu")
    t.write_all()
    bob = t.h.connect(user="bob")
    t.send(bob, ct.Request, key="npu")
    assert len(t.held.waiting) == 1  # bob's request is being written

    stopped: list[object] = []
    t.h.tracker.stopService().addBoth(stopped.append)
    t.h.flush()  # every connection closes meanwhile
    assert not any(c.open for c in t.h.conns)
    t.write_all()

    assert stopped == [[None, None]]
    with sqlite3.connect(t.store.path) as db:
        leases = db.execute("SELECT user_name FROM compass_leases").fetchall()
        requests = db.execute("SELECT user_name FROM compass_requests").fetchall()
        history = db.execute("SELECT id FROM compass_history").fetchall()
    assert (leases, requests, history) == ([("carol",)], [("bob",)], [])
    t.close()
