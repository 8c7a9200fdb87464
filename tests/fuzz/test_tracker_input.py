"""Hostile bytes at the tracker: malformed, truncated, oversized and mutated AMP boxes
(starting from valid ones), and the same through the front door that also speaks TVM's
protocol. After every input a legitimate client on another connection is still served.

Each hostile connection is a real L{TrackerConnection} (or L{FrontDoor}) of one
L{TrackerService} on a Clock, fed through a StringTransport; an exception escaping
C{dataReceived} ends that connection, as the reactor would. Run with ``pytest -s`` to
see how many inputs were tried.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from hypothesis import given, target
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.protocol.tvm_tracker import TRACKER_MAGIC
from compassd.tracker.frontdoor import FrontDoor
from compassd.tracker.service import TrackerConnection
from compassd.tracker.tvm import TvmTrackerConnection
from tests.fuzz._inprocess import ENDLESS, endless_box
from tests.tracker.test_service import Harness


def box(command: type[amp.Command], ask: int, **arguments: Any) -> bytes:
    values = command.makeArguments(arguments, None)
    values[amp.COMMAND] = command.commandName
    values[amp.ASK] = str(ask).encode()
    return amp.AmpBox(values).serialize()


VALID = [
    box(Hello, 1, versions=[PROTOCOL_VERSION], role="client", user="mallory"),
    box(Hello, 1, versions=[PROTOCOL_VERSION], role="board", user="mallory"),
    box(ct.Request, 2, key="npu", priority=5),
    box(ct.Release, 3, lease="lease-1"),
    box(ct.ListDevices, 4),
    box(bt.Register, 5, device="npu-9", key="npu", address="x:1"),
    box(bt.Redeem, 6, device="npu-1", ticket="t" * 40),
    box(ct.Kick, 7, lease="lease-1", reason="r"),
]


@st.composite
def hostile(draw: Any) -> bytes:
    """A byte stream: valid boxes, then mutated, truncated, padded or replaced."""
    stream = b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=4)))
    how = draw(st.sampled_from(["flip", "truncate", "oversize", "splice", "random",
                                "huge-length", "tvm", "endless"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(stream) - 1))
            stream = stream[:i] + bytes([draw(st.integers(0, 255))]) + stream[i + 1:]
    elif how == "truncate":
        stream = stream[: draw(st.integers(0, len(stream) - 1))]
    elif how == "oversize":
        stream = (b"\x00\x08_command\x00\x05Hello\x00\x04_ask\x00\x011"
                  b"\x00\x04user\xff\xff" + b"A" * 70000 + b"\x00\x00")
    elif how == "splice":
        i = draw(st.integers(0, len(stream)))
        stream = stream[:i] + draw(st.binary(max_size=64)) + stream[i:]
    elif how == "random":
        stream = draw(st.binary(max_size=512))
    elif how == "endless":
        stream += endless_box(draw(st.integers(1, 4000)))
    elif how == "huge-length":
        stream = b"\x01\x00" + b"k" * 256 + b"\xff\xff"
    else:
        stream = TRACKER_MAGIC + draw(st.binary(max_size=256))
    return stream


class Fuzz:
    """One tracker, one legitimate client, and a count of hostile inputs fed."""

    def __init__(self) -> None:
        self.h = Harness()
        self.h.board("npu-1")
        self.legit = self.h.connect(user="ann")
        self.tried = 0

    def feed(self, protocol: Any, data: bytes, chunk: int) -> None:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.6.6.6", 6666))
        protocol.makeConnection(transport)
        try:
            for i in range(0, max(len(data), 1), chunk):
                protocol.dataReceived(data[i:i + chunk])
                if transport.disconnecting:
                    break
        except Exception:
            # The reactor logs such an exception and closes the connection.
            transport.loseConnection()
        if ENDLESS in data and not data.startswith(TRACKER_MAGIC):
            assert transport.disconnecting, "a box that never ends was not cut off"
        protocol.connectionLost(Failure(ConnectionError("closed by the fuzz test")))
        self.tried += 1
        target(float(len(data)), label="bytes fed")
        self.h.flush()
        assert self.h.tracker.running
        rows = {row["name"]: row for row in self.legit.ok(ct.ListDevices)["devices"]}
        # A hostile peer may register its own devices (the tracker here is open), but
        # never touches the legitimate board's.
        assert rows["npu-1"]["state"] == "free", rows["npu-1"]
        assert self.legit.open


def test_hostile_amp_input_never_stops_the_tracker_serving_others() -> None:
    fuzz = Fuzz()

    @given(data=hostile(), chunk=st.integers(1, 4096))
    def one(data: bytes, chunk: int) -> None:
        fuzz.feed(TrackerConnection(fuzz.h.tracker), data, chunk)

    one()
    print(f"\nfuzzed the tracker's AMP port with {fuzz.tried} inputs")
    assert fuzz.tried >= 10


def test_hostile_input_at_the_front_door_never_stops_the_tracker_serving_others() -> None:
    fuzz = Fuzz()
    tracker = fuzz.h.tracker

    @given(data=hostile(), chunk=st.integers(1, 4096))
    def one(data: bytes, chunk: int) -> None:
        door = FrontDoor(partial(TrackerConnection, tracker),
                         partial(TvmTrackerConnection, tracker), lambda host: True)
        fuzz.feed(door, data, chunk)

    one()
    print(f"\nfuzzed the tracker's front door (AMP and TVM) with {fuzz.tried} inputs")
    assert fuzz.tried >= 10
