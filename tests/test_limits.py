"""Connection limits every daemon applies (L{compassd.protocol.limits.ConnectionGuard}):
connections per address, and the time a connection has to say hello."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol.errors import LimitExceeded
from compassd.protocol.limits import ConnectionGuard
from compassd.protocol.peer import CompassPeer
from compassd.tracker.service import TrackerService
from compassd.tracker.tap import Options


class Line:
    def __init__(self, guard: ConnectionGuard, host: str) -> None:
        self.server = guard.buildProtocol(IPv4Address("TCP", host, 40000))
        self.client = CompassPeer()
        self.pump = iosim.connect(
            self.server, iosim.FakeTransport(self.server, isServer=True),
            self.client, iosim.FakeTransport(self.client, isServer=False))

    def hello(self) -> Any:
        out: list[Any] = []
        self.client.callRemote(Hello, versions=[PROTOCOL_VERSION], role="client",
                               user="ann").addBoth(out.append)
        self.pump.flush()
        return out[0]


def guarded(**kw: Any) -> tuple[Clock, ConnectionGuard]:
    clock = Clock()
    tracker = TrackerService(reactor=clock)
    tracker.startService()
    return clock, ConnectionGuard(tracker.factory(), clock, what="tracker", **kw)


def test_a_connection_over_the_per_address_cap_is_told_why_and_closed():
    clock, guard = guarded(per_address=2, hello_timeout=None)
    first, second = Line(guard, "10.0.0.1"), Line(guard, "10.0.0.1")
    third = Line(guard, "10.0.0.1")
    answer = third.hello()
    assert isinstance(answer, Failure) and answer.check(LimitExceeded)
    assert "10.0.0.1 already has 2 connections open to this tracker" in str(answer.value)
    assert "--max-connections-per-address" in str(answer.value)
    clock.advance(0)
    third.pump.flush()
    assert not third.client.alive
    assert not isinstance(first.hello(), Failure)
    assert not isinstance(second.hello(), Failure)
    assert not isinstance(Line(guard, "10.0.0.2").hello(), Failure)


def test_a_closed_connection_frees_its_place_under_the_cap():
    clock, guard = guarded(per_address=1, hello_timeout=None)
    first = Line(guard, "10.0.0.1")
    first.client.transport.loseConnection()
    first.pump.flush()
    assert guard.open == {}
    assert not isinstance(Line(guard, "10.0.0.1").hello(), Failure)


def test_a_refused_connection_that_asks_nothing_is_closed_within_seconds():
    clock, guard = guarded(per_address=1, hello_timeout=None)
    Line(guard, "10.0.0.1")
    silent = Line(guard, "10.0.0.1")
    clock.advance(5)
    silent.pump.flush()
    assert not silent.client.alive


def test_a_connection_that_never_says_hello_is_closed_after_the_hello_timeout():
    clock, guard = guarded(per_address=None, hello_timeout=30.0)
    quiet, polite = Line(guard, "10.0.0.1"), Line(guard, "10.0.0.1")
    assert not isinstance(polite.hello(), Failure)
    clock.advance(29)
    quiet.pump.flush()
    assert quiet.client.alive
    clock.advance(1)
    quiet.pump.flush()
    polite.pump.flush()
    assert not quiet.client.alive
    assert polite.client.alive


def test_tracker_options_have_lab_defaults_and_can_turn_limits_off():
    options = Options()
    options.parseOptions([])
    assert options["max-connections-per-address"] == 64
    assert options["hello-timeout"] == 30.0
    options = Options()
    options.parseOptions(["--max-connections-per-address", "0", "--hello-timeout", "0"])
    assert options["max-connections-per-address"] is None
    assert options["hello-timeout"] is None


def test_server_options_have_lab_defaults_and_can_turn_limits_off():
    from compassd.server.tap import Options as ServerOptions

    options = ServerOptions()
    options.parseOptions(["--key", "npu"])
    assert options["max-connections-per-address"] == 64
    assert options["hello-timeout"] == 30.0
    options = ServerOptions()
    options.parseOptions(["--key", "npu", "--max-connections-per-address", "0",
                          "--hello-timeout", "0"])
    assert options["max-connections-per-address"] is None
    assert options["hello-timeout"] is None


def test_connections_that_said_hello_do_not_count_against_the_per_address_cap():
    clock, guard = guarded(per_address=2, hello_timeout=None)
    lab = [Line(guard, "10.0.0.1") for _ in range(2)]
    for line in lab:
        assert not isinstance(line.hello(), Failure)
    more = [Line(guard, "10.0.0.1") for _ in range(2)]  # the same NAT address, more users
    for line in more:
        assert not isinstance(line.hello(), Failure)
    assert guard.open == {"10.0.0.1": 4}
    assert guard.waiting() == 0


def test_at_the_global_cap_the_busiest_address_loses_its_oldest_silent_connection():
    clock, guard = guarded(per_address=10, hello_timeout=None, unauthenticated=6)
    flood = [Line(guard, f"10.0.1.{i % 3}") for i in range(6)]  # 2 each from 3 addresses
    flood += [Line(guard, "10.0.1.0")]  # at the cap: the busiest loses one (its own)
    assert guard.waiting() == 6
    legit = Line(guard, "10.0.0.9")  # the cap holds, and the newcomer is taken
    assert guard.waiting() == 6
    assert not isinstance(legit.hello(), Failure)
    for line in flood:
        line.pump.flush()
    # 10.0.1.0 held the most (3, then 2 tied first): its two oldest went
    assert [i for i, line in enumerate(flood) if not line.client.alive] == [0, 3]
    assert legit.client.alive


def test_many_addresses_together_hold_no_more_than_the_global_cap():
    clock, guard = guarded(per_address=2, hello_timeout=None, unauthenticated=20)
    lines = [Line(guard, f"10.2.{i // 250}.{i % 250}") for i in range(200)]
    for line in lines:
        line.pump.flush()
    assert guard.waiting() == 20
    assert sum(line.client.alive for line in lines) == 20


def test_the_tvm_front_door_closes_a_connection_that_never_says_anything():
    from functools import partial

    from compassd.tracker.frontdoor import front_door_factory
    from compassd.tracker.service import TrackerConnection
    from compassd.tracker.tvm import TvmTrackerConnection

    clock = Clock()
    tracker = TrackerService(reactor=clock)
    tracker.startService()
    door = front_door_factory(partial(TrackerConnection, tracker),
                              partial(TvmTrackerConnection, tracker))
    guard = ConnectionGuard(door, clock, what="tracker", hello_timeout=30.0)
    silent = Line(guard, "127.0.0.1")
    clock.advance(30)
    silent.pump.flush()
    assert not silent.client.alive
