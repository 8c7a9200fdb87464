"""CompassPeer's limits on one box: bytes and keys, tighter before hello.

A peer that streams keys and never ends its box is hung up on, with one log line, as soon
as the next value it announces would take the box past its limit: that value's bytes
are never read (its length prefix is enough).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol.peer import BOX_LIMITS, HELLO_LIMITS, BoxLimits, CompassPeer
from tests.protocol.test_peer import Echo, Server


def string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def pair(key: bytes, value: bytes) -> bytes:
    return string(key) + string(value)


def connected(limits: BoxLimits | None = None) -> tuple[Server, StringTransport]:
    server = Server()
    if limits is not None:
        server.box_limits = limits
    transport = StringTransport()
    server.makeConnection(transport)
    return server, transport


def greet(server: Server, transport: StringTransport) -> None:
    server.dataReceived(amp.AmpBox(
        _command=b"hello", _ask=b"1", versions=string(b"%d" % PROTOCOL_VERSION),
        role=b"client", user=b"ann").serialize())
    assert server.greeted
    transport.clear()


@pytest.fixture
def warnings() -> Any:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            from twisted.logger import formatEvent
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_a_box_that_never_ends_is_cut_off_before_hello_at_the_hello_limit(
    warnings: list[str]
) -> None:
    server, transport = connected()
    fed = 0
    for i in range(1000):  # bounded: the limit is reached after a few values
        server.dataReceived(pair(b"k%d" % i, b"x" * 4000))
        fed += 1
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert fed * 4000 <= HELLO_LIMITS.max_bytes + 4000
    assert len(warnings) == 1 and "before hello" in warnings[0], warnings
    # nothing more is parsed or kept
    server.dataReceived(pair(b"more", b"y" * 60000))
    assert len(warnings) == 1


def test_a_value_announced_past_the_limit_is_refused_from_its_length_prefix(
    warnings: list[str]
) -> None:
    server, transport = connected()
    greet(server, transport)
    full = BOX_LIMITS.max_bytes // (65535 + 8)  # full values that fit, with their keys
    assert full >= 1
    for i in range(full):
        server.dataReceived(pair(b"k%d" % i, b"x" * 65535))
    assert not transport.disconnecting
    server.dataReceived(string(b"last") + struct.pack("!H", 65535))  # prefix only
    assert transport.disconnecting
    assert "past the" in warnings[0] and "limit on a box" in warnings[0]


def test_too_many_keys_close_the_connection(warnings: list[str]) -> None:
    server, transport = connected()
    greet(server, transport)
    for i in range(BOX_LIMITS.max_keys + 1):
        server.dataReceived(pair(b"k%d" % i, b""))
    assert transport.disconnecting
    assert f"more than {BOX_LIMITS.max_keys} keys" in warnings[0]


def test_boxes_within_the_limits_are_served_one_after_another() -> None:
    server, transport = connected(BoxLimits(max_bytes=200, max_keys=5))
    greet(server, transport)
    for n in range(50):  # each box's count starts afresh
        server.dataReceived(amp.AmpBox(_command=b"test-echo", _ask=b"%d" % n,
                                       n=b"%d" % n, text=b"t" * 100).serialize())
    assert not transport.disconnecting
    assert transport.value().count(b"_answer") == 50


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limits=st.builds(BoxLimits, max_bytes=st.integers(0, 4096), max_keys=st.integers(0, 8)),
       values=st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=600)),
                       max_size=12),
       chunk=st.integers(1, 700))
def test_fuzz_a_box_is_served_exactly_when_it_is_within_the_limits(
    limits: BoxLimits, values: list[tuple[bytes, bytes]], chunk: int
) -> None:
    server, transport = connected(limits)
    greet(server, transport)
    fields = dict(values)
    fields.pop(b"n", None)
    fields.update({b"_command": b"test-echo", b"_ask": b"7", b"n": b"3"})
    data = b"".join(pair(k, v) for k, v in fields.items()) + b"\0\0"
    keys = len(fields)
    size = sum(4 + len(k) + len(v) for k, v in fields.items())
    for i in range(0, len(data), chunk):
        server.dataReceived(data[i:i + chunk])
    served = b"_answer" in transport.value()
    assert served == limits.allows(keys, size), (keys, size, limits)
    assert transport.disconnecting == (not served)


def test_a_daemon_peer_holds_the_limits_of_its_class() -> None:
    assert CompassPeer.box_limits == BOX_LIMITS
    assert HELLO_LIMITS.max_bytes < BOX_LIMITS.max_bytes
    assert Echo.commandName == b"test-echo" and Hello.commandName == b"hello"
