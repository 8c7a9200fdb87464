"""compass-proxy's connection limits: a trickle of bytes does not reset its idle timer
(only whole boxes do), and its listeners carry the same caps and hello deadline as the
tracker's and the board's."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

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
