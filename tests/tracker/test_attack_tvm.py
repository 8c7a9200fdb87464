"""Attacks through TVM's unauthenticated tracker protocol on a real compass-tracker
(--tvm): one address PUTs thousands of fake devices, opens hundreds of TVM connections
and asks with 4000-digit priorities. What it may hold stays at the caps, a legitimate
compassd client keeps listing devices and waiting requests (its latency is printed with
``pytest -s``), and the tracker's resident memory stays under a stated bound.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from typing import Any

from twisted.protocols import amp

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import client_tracker as ct
from compassd.protocol.tvm_tracker import TRACKER_MAGIC
from tests.tracker.test_attack_connections import Legit, rss_kib, tracker

RSS_BOUND_KIB = 150 * 1024
"""The tracker's resident memory after the attack (it starts near 50 MiB; 100,000 fake
devices used to be kept for a day)."""


class TvmSocket:
    """A raw TVM peer: the magic, then frames of little-endian length and JSON."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(TRACKER_MAGIC)
        self.buffer = b""
        try:
            self.magic = self._read(4)
        except ConnectionResetError:
            self.magic = b""

    def _read(self, n: int) -> bytes:
        deadline = time.monotonic() + 10
        while len(self.buffer) < n:
            assert time.monotonic() < deadline, "no answer before the deadline"
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def send(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.sock.sendall(struct.pack("<i", len(body)) + body)

    def reply(self) -> object:
        (size,) = struct.unpack("<i", self._read(4))
        return json.loads(self._read(size))

    def call(self, payload: object) -> object:
        self.send(payload)
        return self.reply()


def parse(command: type[amp.Command], answer: amp.AmpBox) -> dict[str, Any]:
    return command.parseResponse(answer, None)  # type: ignore[no-any-return]


def test_a_tvm_flood_is_held_at_the_caps_and_the_tracker_keeps_serving() -> None:
    with tracker("--tvm", "--tvm-max-devices-per-address", "64",
                 "--tvm-max-connections-per-address", "32",
                 "--tvm-max-requests-per-address", "16") as (proc, port):
        pid = proc.pid
        before = rss_kib(pid)
        legit = Legit(port)
        legit.call(Hello, versions=[PROTOCOL_VERSION], role="client", user="ann")
        flood = TvmSocket(port)
        assert flood.magic == TRACKER_MAGIC
        answers = []
        for batch in range(20):
            for i in range(100):
                port_number = 1000 + batch * 100 + i
                flood.send([3, "npu", [port_number, f"npu:{port_number}"],
                            f"10.{batch}.{i}.1"])
            answers += [flood.reply() for _ in range(100)]
            legit.call(ct.ListDevices)
        assert answers.count(0) == 64 and answers.count(-1) == 2000 - 64
        crowd = [TvmSocket(port) for _ in range(40)]
        kept = [peer for peer in crowd if peer.magic == TRACKER_MAGIC]
        assert len(kept) == 32 - 1  # the flood's own connection is one of the 32
        huge = 10 ** 3999
        refused = 0
        for peer in kept:
            reply = peer.call([4, "empty", "bob", huge])
            refused += reply[0] == -1  # type: ignore[index]
            legit.call(ct.ListDevices)
        assert refused == len(kept)
        for peer in kept:
            peer.send([4, "empty", "bob", 5])
        for peer in kept[16:]:
            reply = peer.reply()
            assert reply[0] == -1  # type: ignore[index]
            assert "16 TVM requests waiting" in reply[1]  # type: ignore[index]
        for _ in range(20):
            legit.call(ct.ListDevices)
        waiting = parse(ct.ListWaiting, legit.call(ct.ListWaiting, key="empty"))["waiting"]
        devices = parse(ct.ListDevices, legit.call(ct.ListDevices))["devices"]
        after = rss_kib(pid)
        print(f"\nTVM flood: 2000 PUTs ({answers.count(0)} kept), {len(crowd)} connections"
              f" ({len(kept) + 1} kept), {len(kept)} 4000-digit priorities refused,"
              f" {len(waiting)} requests waiting; tracker RSS {before} KiB before, {after} KiB"
              f" after (bound {RSS_BOUND_KIB} KiB)")
        print(legit.report("compassd client during the flood"))
        assert {w["user"] for w in waiting} == {"tvm:bob"} and len(waiting) == 16
        assert len(devices) == 64
        assert after < RSS_BOUND_KIB
        for peer in [flood, *crowd]:
            with contextlib.suppress(OSError):
                peer.sock.close()
