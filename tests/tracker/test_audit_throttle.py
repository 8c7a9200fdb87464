"""A flood of refused hellos writes a few audit and log lines, not one each: callers not
yet known are throttled per address (one line a minute, the next saying how many were
left out) and in all (a burst a minute), while a known user's refusals are all kept."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address

from compassd.protocol import client_tracker as ct
from compassd.protocol._command import Hello
from compassd.protocol.errors import NotAuthorized
from compassd.tracker.access import Access, Identity, hash_token
from compassd.tracker.audit import Throttle
from tests.tracker.test_audit import audited, events
from tests.tracker.test_service import Conn, Harness


def stranger(h: Harness, host: str) -> Conn:
    conn = h.connect(role=None)
    conn.server.transport.peerAddress = IPv4Address("TCP", host, 40000)  # type: ignore
    return conn


def bad_hello(conn: Conn) -> None:
    conn.refused(NotAuthorized, Hello, versions=[1], role="board", token="fake")


def secured() -> tuple[Harness, Any]:
    tokens = {hash_token("ann-token"): Identity("ann", frozenset({"client"}))}
    return audited(access=Access(tokens))


def test_a_thousand_fake_hellos_from_one_address_write_one_line_then_a_count() -> None:
    h, log = secured()
    conns = [stranger(h, "10.0.0.7") for _ in range(10)]
    for i in range(1000):
        bad_hello(conns[i % 10])
    assert len(events(log, "refused")) == 1
    h.advance(60)
    bad_hello(conns[0])
    first, second = events(log, "refused")
    assert "repeated" not in first and second["repeated"] == 999
    bad_hello(stranger(h, "10.0.0.8"))  # another address has its own line
    assert len(events(log, "refused")) == 3


def test_a_known_users_refusals_are_each_audited() -> None:
    h, log = secured()
    ann = h.connect(token="ann-token")
    for _ in range(5):
        ann.refused(NotAuthorized, ct.Drain, device="npu-1")
    assert len(events(log, "refused")) == 5


def test_the_throttle_counts_per_key_caps_a_burst_and_bounds_its_memory() -> None:
    throttle = Throttle(window=60.0, burst=3, keys=4)
    assert throttle.admit("a", 0.0) == 0
    assert throttle.admit("a", 1.0) is None and throttle.admit("a", 59.0) is None
    assert throttle.admit("a", 60.0) == 2
    assert [throttle.admit(k, 61.0) for k in "bcd"] == [0, 0, None]  # the burst of 3
    assert throttle.admit("d", 125.0) == 1  # its held-back line is counted later
    for i in range(100):
        throttle.admit(f"k{i}", 200.0 + i * 60)
    assert len(throttle._held) <= 4
