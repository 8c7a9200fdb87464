"""A standby tracker (compassd.tracker.standby): it redirects every hello to the active
tracker, takes over when it gets the lock, and an active tracker that lost its lock to
another stops. The lock here is a fake with the real one's interface; the real one, on a
real PostgreSQL server, is in tests/tracker/store/test_postgresql.py."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from compassd.protocol import REDIRECT_VERSION, Hello, Unavailable
from compassd.protocol import client_tracker as ct
from compassd.tracker.service import TrackerService
from compassd.tracker.standby import LockKeeper, Standby, default_advertise
from compassd.tracker.store import LiveState, Snapshot, StoreError
from compassd.tracker.tap import tracker_status
from tests.tracker.test_service import Harness


def test_a_standby_redirects_a_caller_that_follows_redirects_and_closes() -> None:
    h = Harness()
    h.tracker.standby = Standby("b.lab:9190", "a.lab:9190")
    conn = h.connect(role=None)
    answer = conn.ok(Hello, versions=[1, REDIRECT_VERSION], role="board", user="rack")
    assert answer["active"] == "a.lab:9190" and answer["roles"] == []
    assert not conn.server.greeted and not conn.open
    assert h.tracker.scheduler.devices == {}


def test_a_standby_tells_an_older_caller_where_the_active_tracker_is_in_a_sentence() -> None:
    h = Harness()
    h.tracker.standby = Standby("b.lab:9190", "a.lab:9190")
    conn = h.connect(role=None)
    text = conn.refused(Unavailable, Hello, versions=[1], role="client", user="ann")
    assert text.startswith("This tracker (b.lab:9190) is a standby")
    assert "the active tracker is at a.lab:9190" in text and "--tracker A,B" in text
    assert not conn.open
    conn = h.connect(role=None)
    h.tracker.standby.active = None
    text = conn.refused(Unavailable, Hello, versions=[1], role="client", user="ann")
    assert "has not said where it is yet" in text
    assert tracker_status(h.tracker) == "standby; the active tracker is not known yet"


def test_the_advertised_address_defaults_to_the_first_tcp_listen_port() -> None:
    assert default_advertise(["unix:/run/x", "tcp:9300:interface=10.0.0.7"]) == "10.0.0.7:9300"
    assert default_advertise(["ssl:port=9301:privateKey=k.pem"]).endswith(":9301")
    assert default_advertise(["systemd:domain=INET:index=0"]).endswith(":9190")


class FakeLock:
    """The interface of compassd.tracker.store.postgresql.ActiveLock, in memory: who
    holds the lock is C{holder}."""

    description = "postgresql://db/compass"

    def __init__(self, address: str, database: dict[str, Any]) -> None:
        self.address = address
        self.database = database
        self.held = False
        self.closed = 0

    def try_take(self, now: float) -> bool:
        if self.database.get("down"):
            raise StoreError("The tracker's store postgresql://db/compass could not be"
                             " asked which tracker is active: connection refused.")
        if self.database.get("holder") not in (None, self):
            return False
        self.database.update(holder=self, active=self.address)
        self.held = True
        return True

    def active(self) -> str | None:
        return self.database.get("active")

    def still_held(self) -> bool:
        return self.held and self.database.get("holder") is self

    def close(self) -> None:
        self.closed += 1
        if self.database.get("holder") is self:
            self.database["holder"] = None
        self.held = False


def keeper_for(tracker: TrackerService, lock: FakeLock, loads: list[Any],
               exits: list[int]) -> LockKeeper:
    def load() -> Snapshot:
        outcome = loads.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def restore(snapshot: Snapshot) -> None:
        tracker.standby = None
        restored.append(snapshot)

    restored: list[Snapshot] = []
    keeper = LockKeeper(tracker.reactor, tracker, lock,  # type: ignore[arg-type]
                        load=load, restore=restore, exit=exits.append,
                        run=lambda call: maybeDeferred(call))
    keeper.restored = restored  # type: ignore[attr-defined]
    return keeper


def test_a_standby_polls_takes_over_when_the_lock_is_free_and_then_checks_it() -> None:
    clock = Clock()
    database: dict[str, Any] = {}
    first = FakeLock("a:9190", database)
    assert first.try_take(0)
    tracker = TrackerService(reactor=clock)
    tracker.standby = Standby("b:9190", None, since=0.0)
    lock = FakeLock("b:9190", database)
    snapshot = Snapshot(live=LiveState(), epoch=2)
    keeper = keeper_for(tracker, lock, [StoreError("The store could not be read."),
                                        snapshot], [])
    keeper.startService()
    assert tracker.standby.active == "a:9190"  # read at once
    database["active"] = "a2:9190"
    clock.advance(keeper.poll_every)
    assert tracker.standby.active == "a2:9190"
    first.close()  # the active tracker's connection dropped
    clock.advance(keeper.poll_every)  # taken, but the store could not be read: let go
    assert tracker.standby is not None and not lock.held and lock.closed == 1
    clock.advance(keeper.poll_every)  # taken again, and read
    assert tracker.standby is None and keeper.restored == [snapshot]  # type: ignore[attr-defined]
    assert lock.held and database["active"] == "b:9190"
    assert keeper.took_over_at == clock.seconds()
    clock.advance(keeper.check_every * 3)
    assert lock.held
    keeper.stopService()
    assert not lock.held


def test_an_active_tracker_whose_lock_another_took_stops_without_writing() -> None:
    clock = Clock()
    database: dict[str, Any] = {}
    tracker = TrackerService(reactor=clock)
    tracker.journal = object()  # type: ignore[assignment]
    lock = FakeLock("a:9190", database)
    assert lock.try_take(0)
    exits: list[int] = []
    keeper = keeper_for(tracker, lock, [], exits)
    keeper.startService()
    # The lock's connection dropped, and the database was down: it goes on from memory.
    lock.held = False
    database.update(holder=None, down=True)
    clock.advance(keeper.check_every)
    assert exits == [] and tracker.journal is not None
    # The database is back and nobody took the lock: it takes it again.
    database["down"] = False
    clock.advance(keeper.check_every)
    assert lock.held and exits == []
    # Dropped again, and this time the standby took it first.
    lock.held = False
    database["holder"] = None
    assert FakeLock("b:9190", database).try_take(1)
    clock.advance(keeper.check_every)
    assert exits == [75] and tracker.journal is None


@pytest.mark.parametrize("standby", [True, False])
def test_a_standby_takes_no_command_and_an_active_tracker_serves(standby: bool) -> None:
    h = Harness()
    if standby:
        h.tracker.standby = Standby("b:9190", "a:9190")
    conn = h.connect(role=None)
    answer = conn.ok(Hello, versions=[REDIRECT_VERSION], role="client", user="ann")
    if standby:
        assert answer["active"] == "a:9190"
        assert not conn.open
    else:
        assert answer["active"] is None and "client" in answer["roles"]
        conn.peer.greeted = True
        assert conn.ok(ct.ListDevices)["devices"] == []
