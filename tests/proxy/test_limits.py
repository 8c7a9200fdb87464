"""compass-proxy's connection limits: a trickle of bytes does not reset its idle timer
(only whole boxes do), and its listeners carry the same caps and hello deadline as the
tracker's and the board's."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol.limits import ConnectionGuard
from compassd.proxy.service import ProxyService
from compassd.proxy.tap import Options
from tests.fuzz._inprocess import box


def connection(clock: Clock) -> tuple[object, StringTransport]:
    proxy = ProxyService(clock, "tcp:127.0.0.1:9", "proxy.lab:9090", idle_timeout=60.0)
    guard = ConnectionGuard(proxy.factory(), clock, what="proxy", hello_timeout=None)
    protocol = guard.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_trickle_of_bytes_does_not_keep_a_connection_open_past_the_idle_timeout() -> None:
    clock = Clock()
    protocol, transport = connection(clock)
    hello = box(Hello, 1, versions=[PROTOCOL_VERSION], role="client", user="u" * 200)
    for second in range(61):  # one byte a second: never a whole box
        if transport.disconnecting:
            break
        protocol.dataReceived(hello[second:second + 1])  # type: ignore[attr-defined]
        clock.advance(1)
    assert transport.disconnecting
    assert second == 60


def test_whole_boxes_do_reset_the_idle_timer() -> None:
    clock = Clock()
    protocol, transport = connection(clock)
    unknown_notice = b"\x00\x08_command\x00\x04ping\x00\x00"  # ignored, but a whole box
    for _ in range(5):
        clock.advance(50)
        protocol.dataReceived(unknown_notice)  # type: ignore[attr-defined]
    assert not transport.disconnecting
    clock.advance(60)
    assert transport.disconnecting


def test_proxy_options_have_the_connection_limits() -> None:
    options = Options()
    options.parseOptions([])
    assert options["max-connections-per-address"] == 64
    assert options["max-unauthenticated"] == 256
    assert options["hello-timeout"] == 30.0
    options = Options()
    options.parseOptions(["--max-connections-per-address", "0", "--hello-timeout", "0"])
    assert options["max-connections-per-address"] is None
    assert options["hello-timeout"] is None


def test_a_client_that_says_hello_but_presents_no_ticket_is_closed_at_the_hello_deadline(
) -> None:
    """A client's hello needs no token at the proxy, so until the tracker vouches for its
    ticket it counts as not past hello: one that says hello and sits is closed at the
    deadline, like a silent one."""
    clock = Clock()
    proxy = ProxyService(clock, "tcp:127.0.0.1:9", "proxy.lab:9090", idle_timeout=600.0)
    guard = ConnectionGuard(proxy.factory(), clock, what="proxy", hello_timeout=30.0)
    address = IPv4Address("TCP", "10.0.0.1", 40000)
    protocol = guard.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    protocol.dataReceived(box(Hello, 1, versions=[PROTOCOL_VERSION], role="client",
                              user="ann"))
    assert b"_answer" in transport.value(), "the hello was not answered"
    assert guard.waiting() == 1, "a client without a checked ticket counts as waiting"
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_proxy_options_limit_session_opens_per_address_by_default() -> None:
    options = Options()
    options.parseOptions([])
    limit = options["open-limit"]
    assert limit is not None and (limit.rate, limit.burst) == (5.0, 20)
    assert "--session-open-rate" in str(options) and "ticket check" in str(options)
    options = Options()
    options.parseOptions(["--session-open-rate", "0.5", "--session-open-burst", "2"])
    assert (options["open-limit"].rate, options["open-limit"].burst) == (0.5, 2)
    options = Options()
    options.parseOptions(["--session-open-rate", "0"])
    assert options["open-limit"] is None


@pytest.mark.parametrize("argv", [["--session-open-rate", "-1"],
                                  ["--session-open-rate", "nan"],
                                  ["--session-open-rate", "fast"],
                                  ["--session-open-burst", "0"],
                                  ["--session-open-burst", "2.5"]])
def test_nonsense_open_limits_are_usage_errors_that_say_what_is_wanted(
        argv: list[str]) -> None:
    with pytest.raises(usage.UsageError, match="--session-open-rate takes a number"):
        Options().parseOptions(argv)


def test_a_session_open_past_the_limit_is_refused_without_asking_the_tracker() -> None:
    """In memory: the shell asks the core, refuses with a sentence, cancels the channel
    it opened, and never calls check-ticket; another address is still checked."""
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from compassd.protocol.errors import LimitExceeded
    from compassd.proxy.connection import ProxyConnection
    from compassd.ratelimit import OpenLimit

    clock = Clock()
    proxy = ProxyService(clock, "tcp:127.0.0.1:9", "proxy.lab:9090",
                         open_limit=OpenLimit(rate=1.0, burst=1))
    checks: list[tuple[str, str]] = []

    class Board:
        def check_ticket(self, device: str, ticket: str) -> Deferred[dict[str, str]]:
            checks.append((device, ticket))
            return Deferred()  # the tracker has not answered yet

    proxy.pairing.add_device("board-p", Board())  # type: ignore[arg-type]

    def client(host: str) -> ProxyConnection:
        connection = ProxyConnection(proxy)
        connection.makeConnection(StringTransport(
            peerAddress=IPv4Address("TCP", host, 40000)))
        connection.mode = "client"
        return connection

    got: list[object] = []
    client("10.0.0.2").open_session("t1", "board-p").addBoth(got.append)
    assert checks == [("board-p", "t1")] and got == []
    second = client("10.0.0.2")
    with pytest.raises(LimitExceeded) as refused:
        second.open_session("t2", "board-p")
    said = str(refused.value)
    assert "board board-p for 10.0.0.2" in said and "Wait 1.00 s" in said
    assert checks == [("board-p", "t1")] and proxy.pairing.pending() == 1
    assert second.channel is None and second.relay is None
    client("10.0.0.3").open_session("t3", "board-p").addBoth(got.append)
    assert checks[-1] == ("board-p", "t3")
    clock.advance(1.0)
    client("10.0.0.2").open_session("t4", "board-p").addBoth(got.append)
    assert checks[-1] == ("board-p", "t4")
    assert not any(isinstance(g, Failure) for g in got)
