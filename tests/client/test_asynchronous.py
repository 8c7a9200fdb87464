"""AsyncTracker and AsyncLease against a real TrackerService in this process.

Most tests connect through iosim pumps and drive the tracker's timers with a task.Clock,
so they are synchronous and exact; the two at the end use real loopback sockets on the
reactor pytest-twisted runs.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from compassd.client import (
    AsyncLease,
    AsyncTracker,
    LeaseExpired,
    LeaseLost,
    NotAuthorized,
    TrackerUnreachable,
    WaitTimeout,
)
from compassd.protocol import Hello
from compassd.protocol import board_tracker as bt
from compassd.protocol.peer import CompassPeer
from compassd.tracker.access import Access, Identity, hash_token
from compassd.tracker.service import TrackerService
from tests.helpers import free_port

KEY = "npu-x2"


def result(d: Deferred[Any]) -> Any:
    """The result a Deferred already has; fail the test if it has none or failed."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def fired(d: Deferred[Any]) -> bool:
    """Whether C{d} has its result (one chained to another Deferred has none yet)."""
    seen: list[bool] = []
    d.addBoth(lambda outcome: seen.append(True) or outcome)
    return bool(seen)


def failure(d: Deferred[Any]) -> Failure:
    """The Failure a Deferred already has; fail the test if it has none or succeeded."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    assert isinstance(outcome[0], Failure), f"expected a failure, got {outcome[0]!r}"
    return outcome[0]


class Harness:
    """A TrackerService on a Clock; every connection to it is an iosim pump."""

    def __init__(self, access: Access | None = None) -> None:
        self.clock = Clock()
        # Boards here send no heartbeats: only the tests' own deadlines may pass.
        self.service = TrackerService(reactor=self.clock, access=access or Access(),
                                      heartbeat_timeout=3600)
        self.service.startService()
        self.factory = self.service.factory()
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[Any] = []

    def attach(self, client: Any) -> None:
        server = self.factory.buildProtocol(iosim.FakeAddress())
        self.servers.append(server)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, isServer=True),
            client, iosim.FakeTransport(client, isServer=False),
        )
        self.pumps.append(pump)

    def flush(self) -> None:
        """Deliver every byte in flight, both ways, on every connection."""
        for _ in range(100):
            moved = False
            for pump in self.pumps:
                moved = pump.pump() or moved
            if not moved:
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def endpoint(self) -> IStreamClientEndpoint:
        return _PumpEndpoint(self)

    def connect(self, **kwargs: Any) -> AsyncTracker:
        d = AsyncTracker.connect(None, endpoint=self.endpoint(), **kwargs)
        self.flush()
        return result(d)

    def board(self, device: str = "npu-1", address: str = "10.0.0.5:9091",
              info: tuple[str, ...] = ("target=X2_1204",), user: str = "rack") -> CompassPeer:
        """A board connection that has registered C{device} in KEY."""
        board = CompassPeer()
        self.attach(board)
        hello = board.callRemote(Hello, versions=[1], role="board", user=user)
        self.flush()
        result(hello)
        board.greeted = True
        registered = board.callRemote(bt.Register, device=device, key=KEY, address=address,
                                      info=list(info))
        self.flush()
        result(registered)
        return board


@implementer(IStreamClientEndpoint)
class _PumpEndpoint:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def connect(self, factory: Any) -> Deferred[Any]:
        client = factory.buildProtocol(iosim.FakeAddress())
        self.harness.attach(client)
        return succeed(client)


def grant(h: Harness, tracker: AsyncTracker, **kwargs: Any) -> AsyncLease:
    d = tracker.request(KEY, **kwargs)
    h.flush()
    return result(d)


def test_connect_says_hello_and_learns_the_user_and_roles() -> None:
    h = Harness()
    tracker = h.connect(user="alice")
    assert tracker.user == "alice"
    assert "client" in tracker.roles
    assert tracker.server_software.startswith("compassd ")
    assert tracker.connected


class _HangsUp(Protocol):
    """A server that closes the connection as soon as the client speaks."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()


class _Silent(Protocol):
    """A server whose kernel takes the connection but which never reads or answers (a
    stopped process)."""


@implementer(IStreamClientEndpoint)
class _HangUpEndpoint:
    def __init__(self, server: type[Protocol] = _HangsUp) -> None:
        self.pumps: list[iosim.IOPump] = []
        self.server = server

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def connect(self, factory: Any) -> Deferred[Any]:
        client, server = factory.buildProtocol(iosim.FakeAddress()), self.server()
        self.pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, isServer=True),
            client, iosim.FakeTransport(client, isServer=False),
        ))
        return succeed(client)


def test_a_tracker_that_hangs_up_during_the_hello_is_tracker_unreachable() -> None:
    endpoint = _HangUpEndpoint()
    d = AsyncTracker.connect(None, endpoint=endpoint)
    for pump in endpoint.pumps:
        pump.flush()
    caught = failure(d)
    assert caught.check(TrackerUnreachable), caught
    assert str(caught.value).startswith("Cannot reach the tracker at ")
    assert "compass-tracker running" in str(caught.value)


def test_a_tracker_that_never_answers_the_hello_is_unreachable_at_the_timeout() -> None:
    clock = Clock()
    endpoint = _HangUpEndpoint(_Silent)
    d = AsyncTracker.connect(clock, endpoint=endpoint, timeout=5)
    endpoint.flush()
    clock.advance(4.9)
    endpoint.flush()
    assert not fired(d), "gave up on the hello before its timeout"
    clock.advance(0.1)
    endpoint.flush()
    caught = failure(d)
    assert caught.check(TrackerUnreachable), caught
    said = str(caught.value)
    assert said.startswith("Cannot reach the tracker at ") and "within 5 s" in said, said
    assert not clock.getDelayedCalls()


def test_an_answered_hello_leaves_no_timer_behind() -> None:
    h = Harness()
    d = AsyncTracker.connect(h.clock, endpoint=h.endpoint(), timeout=5)
    h.flush()
    tracker = result(d)
    h.advance(60)
    assert tracker.connected


def test_request_is_granted_a_lease_with_device_address_info_and_time_left() -> None:
    h = Harness()
    h.board(device="npu-1", address="10.0.0.5:9091", info=("target=X2_1204", "cores=3"))
    tracker = h.connect(user="alice")
    queued: list[tuple[str, int, int]] = []
    lease = grant(h, tracker, lease=120, on_queued=lambda *a: queued.append(a))
    assert lease.device == "npu-1"
    assert lease.address == "10.0.0.5:9091"
    assert lease.key == KEY
    assert lease.info == {"target": "X2_1204", "cores": "3"}
    assert lease.ticket
    assert lease.active
    assert 110 < lease.remaining <= 120
    assert lease.id in tracker.leases
    assert [(r, p, n) for r, p, n in queued] == [(lease.request, 0, 1)]


def test_lease_length_is_capped_by_the_tracker_maximum() -> None:
    h = Harness()
    h.board()
    tracker = h.connect(user="alice")
    lease = grant(h, tracker, lease=10 * 3600)
    assert 3500 < lease.remaining <= 3600


def test_wait_timeout_says_how_long_it_waited_and_at_which_position() -> None:
    h = Harness()
    h.board()
    holder = h.connect(user="carol")
    grant(h, holder)  # the only device is busy from now on
    first = h.connect(user="bob")
    first.request(KEY)
    alice = h.connect(user="alice")
    waiting = alice.request(KEY, wait=5)
    h.flush()
    assert not fired(waiting)
    h.advance(4.9)
    assert not fired(waiting)
    h.advance(0.2)
    error = failure(waiting).value
    assert isinstance(error, WaitTimeout)
    assert error.key == KEY
    assert error.position == 1
    assert error.waited == pytest.approx(5, abs=0.2)
    text = str(error)
    assert "Waited 5 s" in text
    assert KEY in text
    assert "position 2 in the queue, counting from 1" in text
    assert error.request in text


def test_position_changes_are_pushed_at_most_every_interval() -> None:
    h = Harness()
    h.board()
    holder = h.connect(user="carol")
    grant(h, holder)
    bob = h.connect(user="bob")
    first = bob.request(KEY)
    alice = h.connect(user="alice")
    positions: list[int] = []
    queued: list[int] = []
    second = alice.request(KEY, on_position=positions.append,
                           on_queued=lambda r, p, n: queued.append(p))
    h.flush()
    assert queued == [1]
    first.cancel()
    h.flush()
    assert positions == []
    h.advance(0.5)
    assert positions == [0]
    assert not fired(second)


def test_bad_token_is_refused_with_not_authorized_and_the_connection_closed() -> None:
    access = Access({hash_token("right"): Identity("alice", frozenset({"client"}))})
    h = Harness(access)
    d = AsyncTracker.connect(None, endpoint=h.endpoint(), token="wrong")
    h.flush()
    error = failure(d).value
    assert isinstance(error, NotAuthorized)
    assert "token" in str(error)
    assert not h.servers[0].alive


def test_good_token_is_accepted_under_its_user() -> None:
    access = Access({hash_token("right"): Identity("alice", frozenset({"client"}))})
    h = Harness(access)
    tracker = h.connect(token="right", user="mallory")
    assert tracker.user == "alice"
    assert tracker.roles == ["client"]


def test_release_ends_the_lease_and_frees_the_device_for_the_next_request() -> None:
    h = Harness()
    h.board()
    alice = h.connect(user="alice")
    lease = grant(h, alice)
    bob = h.connect(user="bob")
    waiting = bob.request(KEY)
    h.flush()
    assert not fired(waiting)
    released = lease.release()
    h.flush()
    assert result(released) is None
    assert not lease.active
    assert result(lease.ended) is None
    assert lease.released and lease.end_reason is None
    assert lease.id not in alice.leases
    assert result(waiting).device == "npu-1"
    # releasing again is harmless and sends nothing
    assert result(lease.release()) is None


def test_released_device_shows_free_in_the_summary() -> None:
    h = Harness()
    h.board()
    alice = h.connect(user="alice")
    lease = grant(h, alice)
    busy = alice.summary()
    h.flush()
    [row] = result(busy)["devices"]
    assert (row["state"], row["holder"]) == ("busy", "alice")
    lease.release()
    h.flush()
    free = alice.summary()
    h.flush()
    summary = result(free)
    assert [d["state"] for d in summary["devices"]] == ["free"]
    assert summary["queues"][0]["key"] == KEY
    assert summary["queues"][0]["free"] == 1


def test_lease_ended_fires_with_lease_expired_at_the_deadline() -> None:
    h = Harness()
    h.board()
    alice = h.connect(user="alice")
    lease = grant(h, alice, lease=30)
    h.advance(29)
    assert lease.active
    h.advance(2)
    reason = result(lease.ended)
    assert isinstance(reason, LeaseExpired)
    assert reason.lease == lease.id
    assert not lease.active
    assert lease.end_reason is reason


def test_kicked_lease_ends_with_lease_lost_saying_kicked() -> None:
    h = Harness()
    h.board()
    alice = h.connect(user="alice")
    lease = grant(h, alice)
    admin = h.connect(user="root", role="admin")
    kicked = admin.kick(lease.id, "maintenance")
    h.flush()
    result(kicked)
    reason = result(lease.ended)
    assert isinstance(reason, LeaseLost)
    assert reason.reason == "kicked"


def test_cancelling_the_request_deferred_withdraws_it_at_the_tracker() -> None:
    h = Harness()
    alice = h.connect(user="alice")
    waiting = alice.request(KEY, wait_for_board=True)
    h.flush()

    def count() -> int:
        queues = alice.queues()
        h.flush()
        return sum(q["count"] for q in result(queues))

    assert count() == 1
    waiting.cancel()
    assert failure(waiting).check(CancelledError)
    h.flush()
    assert count() == 0


def test_losing_the_connection_fails_waiting_requests_and_ends_leases() -> None:
    h = Harness()
    h.board()
    alice = h.connect(user="alice")
    lease = grant(h, alice)
    waiting = alice.request(KEY)
    h.flush()
    closed = alice.close()
    h.flush()
    result(closed)
    assert isinstance(failure(waiting).value, TrackerUnreachable)
    reason = result(lease.ended)
    assert isinstance(reason, LeaseLost) and reason.reason == "client-lost"
    later = alice.summary()
    assert isinstance(failure(later).value, TrackerUnreachable)


def test_a_connection_lost_with_calls_in_flight_fails_them_as_tracker_unreachable() -> None:
    # bench/chaos.py found it: a tracker killed while a release was in flight made
    # lease.release() raise Twisted's ConnectionLost, not an error of compassd
    h = Harness()
    h.board()
    alice = h.connect(user="alice")
    lease = grant(h, alice)
    released = lease.release()
    devices = alice.devices()
    # the kernel says the tracker is gone before either box reached it
    alice._protocol.connectionLost(Failure(ConnectionLost("the tracker was killed")))
    for call, name in ((released, "release"), (devices, "list-devices")):
        error = failure(call).value
        assert isinstance(error, TrackerUnreachable)
        assert f"was lost before it answered {name!r}; connect again" in str(error)
    assert isinstance(result(lease.ended), LeaseLost)  # no secret: it ended with it


# --- real loopback ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_connect_to_a_port_nothing_listens_on_raises_tracker_unreachable() -> Any:
    from twisted.internet import reactor

    port = free_port()
    with pytest.raises(TrackerUnreachable) as caught:
        yield AsyncTracker.connect(reactor, "127.0.0.1", port, timeout=5)
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text
    assert "compass-tracker running" in text


@pytest_twisted.inlineCallbacks
def test_request_and_release_over_real_tcp() -> Any:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    service = TrackerService(reactor=reactor)
    service.startService()
    listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        service.factory()
    )
    port = listening.getHost().port
    trackers: list[AsyncTracker] = []
    try:
        board = yield AsyncTracker.connect(reactor, "127.0.0.1", port, role="board",
                                           user="rack", timeout=5)
        trackers.append(board)
        yield board.call(bt.Register, device="npu-1", key=KEY, address="10.0.0.5:9091")
        alice = yield AsyncTracker.connect(reactor, "127.0.0.1", port, user="alice",
                                           timeout=5)
        trackers.append(alice)
        lease = yield alice.request(KEY, lease=60)
        assert (lease.device, lease.address) == ("npu-1", "10.0.0.5:9091")
        yield lease.release()
        summary = yield alice.summary()
        assert [d["state"] for d in summary["devices"]] == ["free"]
    finally:
        for t in trackers:
            yield t.close()
        yield listening.stopListening()
        service.stopService()
