"""TrackerLink against a real TrackerService, in memory: a MemoryReactorClock for the
link's connection attempts and timers, iosim for the bytes; no sockets, no real time."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from compassd.protocol import client_tracker as ct
from compassd.server.tracker_link import BoardDescription, TrackerLink
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.service import TrackerConnection, TrackerService


class World:
    """One board link and whichever tracker is running now, on one clock."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.revoked: list[tuple[str, str, str]] = []
        self.link = TrackerLink(
            self.clock, "tcp:host=127.0.0.1:port=9190",
            BoardDescription(device="board-1", key="demo", address="10.0.0.5:9191"),
            on_revoke=lambda *args: self.revoked.append(args), retry_max_delay=2.0)
        self.tracker: TrackerService | None = None
        self.pumps: list[iosim.IOPump] = []
        self.attempts = 0

    def start_tracker(self) -> TrackerService:
        self.tracker = TrackerService(reactor=self.clock, scheduler=Scheduler(Policy()))
        self.tracker.startService()
        return self.tracker

    def accept(self) -> None:
        """Connect the link's newest connection attempt to the running tracker."""
        assert self.tracker is not None
        assert len(self.clock.tcpClients) > self.attempts, "the link did not try to connect"
        factory = self.clock.tcpClients[self.attempts][2]
        self.attempts += 1
        address = IPv4Address("TCP", "127.0.0.1", 9190)
        client = factory.buildProtocol(address)
        server = TrackerConnection(self.tracker)
        self.pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, isServer=True),
            client, iosim.FakeTransport(client, isServer=False)))
        self.flush()

    def flush(self) -> None:
        """Deliver bytes on every connection until all are quiet."""
        for _ in range(20):
            if not any([pump.flush() for pump in self.pumps]):
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let C{seconds} pass in small steps, delivering bytes after each."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.flush()


def test_the_link_registers_and_heartbeats_keep_it_registered() -> None:
    w = World()
    w.start_tracker()
    w.link.startService()
    w.accept()
    assert w.link.registered and w.link.registrations == 1
    w.advance(60.0)  # many heartbeat intervals: each beat is answered
    assert w.link.registered and w.link.registrations == 1
    assert len(w.clock.tcpClients) == 1, "the link reconnected though nothing went wrong"


def test_a_lost_tracker_is_reconnected_with_backoff_and_registered_again() -> None:
    w = World()
    w.start_tracker()
    w.link.startService()
    w.accept()
    w.pumps[0].server.transport.loseConnection()  # type: ignore[attr-defined]
    w.flush()
    assert not w.link.registered
    w.start_tracker()  # a fresh tracker, as after a restart: it knows no board
    w.advance(5.0)
    assert len(w.clock.tcpClients) >= 2, "the link never tried again"
    w.accept()
    assert w.link.registered and w.link.registrations == 2


def test_an_unanswered_heartbeat_drops_the_link_and_it_reconnects() -> None:
    w = World()
    w.start_tracker()
    w.link.startService()
    w.accept()
    assert w.link.registered
    # the tracker goes silent: bytes from the board are no longer delivered
    silent = w.pumps.pop()
    w.advance(60.0)
    silent.flush()  # the link's abort reaches both ends
    assert not w.link.registered
    w.advance(5.0)  # the first retry comes after a backoff delay
    assert len(w.clock.tcpClients) >= 2, "the link did not reconnect after the silence"
    w.accept()
    assert w.link.registered and w.link.registrations == 2


def test_a_kick_at_the_tracker_reaches_the_board_as_a_revocation() -> None:
    w = World()
    tracker = w.start_tracker()
    w.link.startService()
    w.accept()
    w.link.set_health(True, "")
    w.flush()
    # a client takes the board, an admin kicks the lease
    from compassd.protocol import PROTOCOL_VERSION, Hello
    from compassd.protocol.peer import CompassPeer

    class Client(CompassPeer):
        granted: list[dict[str, Any]] = []

        @ct.Granted.responder
        def on_granted(self, **kw: Any) -> dict[str, Any]:
            self.granted.append(kw)
            return {}

        @ct.LeaseEnded.responder
        def on_lease_ended(self, **kw: Any) -> dict[str, Any]:
            return {}

    server = TrackerConnection(tracker)
    client = Client()
    w.pumps.append(iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                                 client, iosim.FakeTransport(client, isServer=False)))
    answers: list[Any] = []
    client.callRemote(Hello, versions=[PROTOCOL_VERSION], role="client",
                      user="ann").addBoth(answers.append)
    w.flush()
    client.greeted = True
    client.callRemote(ct.Request, key="demo").addBoth(answers.append)
    w.flush()
    assert Client.granted, answers
    lease = Client.granted[0]["lease"]
    redeemed: list[Any] = []
    w.link.redeem(Client.granted[0]["ticket"]).addBoth(redeemed.append)  # a session opens
    w.flush()
    assert redeemed and redeemed[0]["lease"] == lease, redeemed
    client.callRemote(ct.Kick, lease=lease, reason="maintenance").addBoth(answers.append)
    w.flush()
    assert [r[0] for r in w.revoked] == [lease], answers
    assert "maintenance" in " ".join(w.revoked[0][1:]), w.revoked


def test_an_unreachable_tracker_is_a_warning_with_address_reason_and_next_retry() -> None:
    from twisted.internet.error import ConnectionRefusedError
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    from twisted.python.failure import Failure

    w = World()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        w.link.startService()
        for attempt in range(2):
            factory = w.clock.tcpClients[attempt][2]
            factory.clientConnectionFailed(w.clock.connectors[attempt],
                                           Failure(ConnectionRefusedError("no one there")))
            w.advance(2.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
        w.link.stopService()
    warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warnings) == 2, warnings
    for n, text in enumerate(warnings, start=1):
        assert text.startswith("cannot reach the tracker at tcp:host=127.0.0.1:port=9190 to"
                               " register board-1: Connection was refused by other side")
        assert "no one there;" in text and f"({n} failed attempts so far)" in text
        assert re.search(r"; trying again in \d+\.\d s", text), text


class Serving:
    """What the board says it serves, changed by the test."""

    def __init__(self) -> None:
        self.now: tuple[str, str, float] | None | bool = None

    def __call__(self) -> tuple[str, str, float] | None | bool:
        return self.now


def reporting_world(serving: Serving) -> World:
    w = World()
    w.link._report = serving  # what BoardService.serving gives a real board
    return w


def test_a_restarted_tracker_adopts_the_session_the_board_reports() -> None:
    serving = Serving()
    serving.now = ("lease-0ld0ld00.7", "alice", 120.0)
    w = reporting_world(serving)
    tracker = w.start_tracker()
    w.link.startService()
    w.accept()
    w.link.set_health(True, "")
    w.flush()
    device = tracker.scheduler.devices["board-1"]
    assert device.state == "busy"
    assert device.lease is not None and device.lease.id == "lease-0ld0ld00.7"
    assert device.lease.user == "alice" and device.lease.adopted
    # the board's session ends; its next heartbeat says so and the device is free
    serving.now = None
    w.advance(tracker.heartbeat_interval + 0.5)
    assert device.lease is None and device.state == "free"


def test_a_lease_the_tracker_ended_is_revoked_when_the_board_reports_it_again() -> None:
    serving = Serving()
    w = reporting_world(serving)
    tracker = w.start_tracker()
    w.link.startService()
    w.accept()
    w.link.set_health(True, "")
    w.flush()
    ended = f"lease-{tracker.scheduler.epoch}.41"  # this tracker's, and not active
    serving.now = (ended, "alice", 10.0)
    w.advance(tracker.heartbeat_interval + 0.5)
    assert [lease for lease, _, _ in w.revoked] == [ended]
    device = tracker.scheduler.devices["board-1"]
    assert device.state == "busy", "never free while the board serves a session"
    serving.now = None  # the board ended it; the next heartbeat confirms
    w.advance(tracker.heartbeat_interval + 0.5)
    assert device.state == "free"


def test_a_heartbeat_while_a_ticket_is_checked_says_nothing_about_sessions() -> None:
    serving = Serving()
    w = reporting_world(serving)
    serving.now = False
    assert w.link._sessions() == {}
    serving.now = None
    assert w.link._sessions() == {"sessions": []}
    serving.now = ("lease-x-1", "bob", 5.0)
    assert w.link._sessions() == {"sessions": [
        {"device": "board-1", "lease": "lease-x-1", "holder": "bob", "expires_in": 5.0}]}
