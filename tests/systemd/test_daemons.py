"""The real daemons talk to systemd: READY with a useful STATUS once they serve, watchdog
pings from the reactor, and socket activation (LISTEN_FDS emulated as systemd does it).

A unix datagram socket stands in for systemd's notification socket; every wait has a
deadline and every process is stopped by its PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compassd.server.tap import server_status
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.service import TrackerService
from compassd.tracker.tap import tracker_status
from tests.helpers import ROOT, daemon_env, start_twistd, stop

DEADLINE = 20.0
_TWISTD = "from twisted.scripts.twistd import run; run()"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    yield path, sock
    sock.close()


def _messages_until(sock: socket.socket, predicate, deadline: float = DEADLINE
                    ) -> list[str]:
    """Datagrams received until one satisfies C{predicate}; fails at the deadline."""
    seen: list[str] = []
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching notification within {deadline:g} s: {seen}")
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if predicate(message):
            return seen


def _start(plugin: str, args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    command = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile=-", plugin, *args]
    return subprocess.Popen(command, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)


def test_the_tracker_says_ready_with_its_status_and_pings_the_watchdog(
        notify_socket) -> None:
    path, sock = notify_socket
    env = daemon_env() | {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    proc = _start("compass-tracker", ["--listen", "tcp:0:interface=127.0.0.1"], env)
    try:
        seen = _messages_until(sock, lambda m: "READY=1" in m)
        ready = seen[-1]
        assert "STATUS=0 devices, 0 leased, 0 waiting" in ready.splitlines()
        # pings keep coming, at half the watchdog timeout (0.2 s): three more in time
        pings = 0
        while pings < 3:
            _messages_until(sock, lambda m: m == "WATCHDOG=1", deadline=5.0)
            pings += 1
    finally:
        stop(proc)
    assert "STOPPING=1" in " ".join(_messages_until(sock, lambda m: "STOPPING=1" in m))


def test_a_socket_activated_tracker_serves_on_the_socket_systemd_passed(
        notify_socket) -> None:
    from compassd.client import connect_tracker

    path, sock = notify_socket
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = daemon_env() | {"NOTIFY_SOCKET": path, "LISTEN_FDNAMES": "compass-tracker.socket"}
    # As systemd does it: the socket is fd 3 and LISTEN_PID is the daemon's own pid.
    command = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile=-",
               "compass-tracker"]
    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", *command],
        cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, pass_fds=(3,),
        preexec_fn=lambda: os.dup2(listener.fileno(), 3))
    listener.close()
    try:
        _messages_until(sock, lambda m: "READY=1" in m)
        client = connect_tracker("127.0.0.1", port, timeout=DEADLINE)
        try:
            assert client.devices() == []
        finally:
            client.close()
    finally:
        stop(proc)


def test_the_server_says_ready_only_once_registered_with_the_tracker(
        tracker: tuple[str, int], notify_socket, tmp_path: Path) -> None:
    path, sock = notify_socket
    env = daemon_env() | {"NOTIFY_SOCKET": path}
    proc = _start("compass-server", [
        "--key", "demo", "--tracker", f"{tracker[0]}:{tracker[1]}", "--backend", "onnx",
        "--listen", "tcp:0:interface=127.0.0.1", "--workdir", str(tmp_path / "work"),
        "--device", "board-1"], env)
    try:
        seen = _messages_until(sock, lambda m: "READY=1" in m)
        status = [line for line in seen[-1].splitlines() if line.startswith("STATUS=")]
        assert status and status[0].startswith("STATUS=registered with tracker, idle")
        assert not any("READY=1" in m for m in seen[:-1])
    finally:
        stop(proc)


def test_a_tracker_that_cannot_listen_never_says_ready_and_exits_1(notify_socket) -> None:
    path, sock = notify_socket
    first, port = start_twistd("compass-tracker")
    env = daemon_env() | {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    second = _start("compass-tracker", ["--listen", f"tcp:{port}:interface=127.0.0.1"], env)
    try:
        # it stops as soon as its reactor runs, so systemd sees a failed start
        seen = _messages_until(sock, lambda m: "STOPPING=1" in m)
        assert second.wait(timeout=20) == 1
        assert not any("READY=1" in m for m in seen), seen
    finally:
        stop(second)
        stop(first)


# --- the status lines ------------------------------------------------------------------


def test_the_tracker_status_counts_devices_leases_and_waiting_requests() -> None:
    from twisted.internet.task import Clock

    tracker = TrackerService(reactor=Clock(), scheduler=Scheduler())
    assert tracker_status(tracker) == "0 devices, 0 leased, 0 waiting"
    scheduler = tracker.scheduler
    for name in ("a", "b", "c"):
        scheduler.register(0.0, "board", name, "npu", f"{name}:9000")
    for user in ("u1", "u2", "u3", "u4", "u5"):
        scheduler.request(0.0, user, user, "npu")
    assert tracker_status(tracker) == "3 devices, 3 leased, 2 waiting"
    scheduler.board_lost(1.0, "board")
    assert tracker_status(tracker).startswith("3 devices (3 offline)")


class _Link:
    def __init__(self, registered: bool) -> None:
        from compassd.server.tracker_link import BoardDescription

        self.registered = registered
        self.endpoint = "tcp:host=tracker:port=9190"
        self.board = BoardDescription(device="d", key="k", address="a")


class _Session:
    user = "alice"


class _Board:
    def __init__(self, registered: bool, session: object = None) -> None:
        self.link = _Link(registered)
        self.session = session


def test_the_server_status_says_whether_it_is_registered_busy_or_unhealthy() -> None:
    assert server_status(_Board(False)) == (
        "not registered: connecting to the tracker at tcp:host=tracker:port=9190")
    assert server_status(_Board(True)) == "registered with tracker, idle"
    assert server_status(_Board(True, _Session())) == (
        "registered with tracker, serving a session of alice")
    sick = _Board(True)
    sick.link.board.healthy, sick.link.board.health_detail = False, "driver gone"
    assert server_status(sick) == "registered with tracker, idle; unhealthy: driver gone"
