"""Attacks on a real compass-tracker over loopback: many source addresses (127.0.0.2-31)
that connect and never say hello, and boxes that never end. A legitimate client says
hello and lists devices throughout; its latency is printed (run with ``pytest -s``), and
the tracker's resident memory stays under a stated bound when the attack ends.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest
from twisted.protocols import amp

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import client_tracker as ct
from tests.fuzz._inprocess import box, endless_box
from tests.helpers import daemon_log, start_twistd, stop

RSS_BOUND_KIB = 150 * 1024
"""The tracker's resident memory after the attacks: it starts near 50 MiB; without box
limits one endless box alone took it past 1 GiB."""

PER_ADDRESS = 8
WAITING = 64
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 32)]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/PID/status")


def read_box(sock: socket.socket, deadline: float) -> amp.AmpBox:
    """The next whole box from C{sock} (a blocking read with a deadline)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, "the tracker closed the legitimate client's connection"
        data += chunk
        try:
            boxes = amp.parseString(data)
        except Exception:  # not whole yet
            continue
        if boxes:
            return boxes[0]
    raise AssertionError("no answer before the deadline")


class Legit:
    """A client that says hello, then lists devices; each round trip is timed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.times: list[float] = []
        self.ask = 0

    def call(self, command: type[amp.Command], **kw: object) -> amp.AmpBox:
        self.ask += 1
        started = time.monotonic()
        self.sock.sendall(box(command, self.ask, **kw))
        answer = read_box(self.sock, started + 10)
        self.times.append(time.monotonic() - started)
        assert amp.ERROR not in answer, answer
        return answer

    def report(self, what: str) -> str:
        ms = sorted(t * 1000 for t in self.times)
        return (f"{what}: {len(ms)} round trips, median {statistics.median(ms):.1f} ms,"
                f" max {ms[-1]:.1f} ms")


@contextlib.contextmanager
def tracker(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = start_twistd("compass-tracker", *args)
    try:
        yield proc, port
    finally:
        stop(proc)


def attacker(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.bind((source, 0))
    sock.settimeout(2)
    sock.connect(("127.0.0.1", port))
    return sock


def closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_many_addresses_that_never_say_hello_hold_no_more_than_the_global_cap() -> None:
    try:
        socket.create_server(("127.0.0.9", 0)).close()
    except OSError:
        pytest.skip("this host cannot bind 127.0.0.9")
    with tracker("--max-connections-per-address", str(PER_ADDRESS),
                 "--max-unauthenticated", str(WAITING), "--hello-timeout", "20") as (proc, port):
        pid = proc.pid
        before = rss_kib(pid)
        legit = Legit(port)
        legit.call(Hello, versions=[PROTOCOL_VERSION], role="client", user="ann")
        attack: list[socket.socket] = []
        for _ in range(PER_ADDRESS):
            for source in ADDRESSES:
                sock = attacker(source, port)
                sock.sendall(b"\x00\x01a\x20\x00" + b"x" * 8192)  # half a box, held
                attack.append(sock)
            legit.call(ct.ListDevices)
        late = Legit(port)  # a newcomer at the cap is still taken, and can say hello
        late.call(Hello, versions=[PROTOCOL_VERSION], role="client", user="bob")
        for _ in range(20):
            late.call(ct.ListDevices)
            legit.call(ct.ListDevices)
        deadline = time.monotonic() + 10
        alive = len(attack)
        while time.monotonic() < deadline:
            alive = sum(not closed(sock) for sock in attack)
            if alive <= WAITING:
                break
        after = rss_kib(pid)
        print(f"\n{len(attack)} silent connections from {len(ADDRESSES)} addresses:"
              f" {alive} still open (cap {WAITING}); tracker RSS {before} KiB before,"
              f" {after} KiB after (bound {RSS_BOUND_KIB} KiB)")
        print(legit.report("client during the attack"))
        print(late.report("client arriving at the cap"))
        assert alive <= WAITING
        assert after < RSS_BOUND_KIB
        assert "connections were waiting for hello" in daemon_log(proc)
        for sock in attack:
            sock.close()


def test_boxes_that_never_end_are_cut_off_and_memory_stays_bounded() -> None:
    with tracker() as (proc, port):
        pid = proc.pid
        before = rss_kib(pid)
        legit = Legit(port)
        legit.call(Hello, versions=[PROTOCOL_VERSION], role="client", user="ann")
        stream = endless_box(60_000, keys=40)  # 2.4 MB in one box, if it were read
        cut = 0
        for i in range(40):
            greeted = i % 2 == 0
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                if greeted:
                    sock.sendall(box(Hello, 1, versions=[PROTOCOL_VERSION], role="client",
                                     user="mallory"))
                    read_box(sock, time.monotonic() + 10)
                with contextlib.suppress(OSError):
                    sock.sendall(stream)
                sock.settimeout(10)
                try:
                    while sock.recv(65536):
                        pass
                    cut += 1
                except ConnectionResetError:
                    cut += 1
            finally:
                sock.close()
            legit.call(ct.ListDevices)
        after = rss_kib(pid)
        print(f"\n40 endless boxes (half after hello): {cut} cut off; tracker RSS {before}"
              f" KiB before, {after} KiB after (bound {RSS_BOUND_KIB} KiB)")
        print(legit.report("client during the attack"))
        assert cut == 40
        assert after < RSS_BOUND_KIB
