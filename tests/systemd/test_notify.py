"""compassd.systemd: the sd_notify datagrams, the notifier service on a fake clock, and the
one-line status texts of the tracker and the board server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from compassd.systemd import (
    SystemdNotifier,
    default_listen,
    hang_after,
    notify,
    notify_address,
    watchdog_interval,
)

# --- the datagram ------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5.0)
    yield path, sock
    sock.close()


def test_notify_sends_one_datagram_to_the_socket_in_notify_socket(receiver) -> None:
    path, sock = receiver
    address = notify_address({"NOTIFY_SOCKET": path})
    assert notify("READY=1\nSTATUS=listening", address) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening"


def test_an_abstract_notify_socket_is_reached_through_a_leading_nul() -> None:
    name = f"compassd-test-{os.getpid()}"
    assert notify_address({"NOTIFY_SOCKET": "@" + name}) == "\0" + name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        assert notify("WATCHDOG=1", notify_address({"NOTIFY_SOCKET": "@" + name}))
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notify_outside_systemd_or_to_a_vanished_socket_returns_false_without_raising(
        tmp_path: Path) -> None:
    assert notify_address({}) is None
    assert notify("READY=1", None) is False
    assert notify("READY=1", str(tmp_path / "nobody-listens.sock")) is False


def test_the_watchdog_is_pinged_at_half_its_timeout_and_only_by_the_process_it_names(
) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"},
                             pid=42) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"},
                             pid=43) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_the_hang_switch_is_read_from_the_environment_and_ignores_junk() -> None:
    assert hang_after({"COMPASS_TEST_HANG_AFTER": "2.5"}) == 2.5
    assert hang_after({"COMPASS_TEST_HANG_AFTER": "soon"}) is None
    assert hang_after({"COMPASS_TEST_HANG_AFTER": "-1"}) is None
    assert hang_after({}) is None


def test_without_sockets_from_systemd_the_default_listen_is_the_fallback() -> None:
    assert default_listen("tcp:9190", {}) == ["tcp:9190"]


def test_sockets_passed_to_this_process_become_systemd_endpoints() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
    assert default_listen("tcp:9190", environ) == [
        "systemd:domain=INET:index=0", "systemd:domain=INET:index=1"]
    other = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}
    assert default_listen("tcp:9190", other) == ["tcp:9190"]


# --- the service on a fake clock -----------------------------------------------------


class _Daemon:
    def __init__(self) -> None:
        self.ready = False
        self.text = "starting"


def _notifier(clock: Clock, daemon: _Daemon, sent: list[str], **kw) -> SystemdNotifier:
    kw.setdefault("address", "/run/notify")
    kw.setdefault("watchdog", None)
    kw.setdefault("hang", None)
    return SystemdNotifier(clock, is_ready=lambda: daemon.ready, status=lambda: daemon.text,
                           send=lambda message, address: sent.append(message), **kw)


def test_ready_is_sent_once_and_only_after_the_daemon_is_ready() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    notifier = _notifier(clock, daemon, sent)
    notifier.startService()
    assert sent == ["STATUS=starting"]
    clock.advance(1.0)
    assert sent == ["STATUS=starting"]
    daemon.ready, daemon.text = True, "registered with tracker, idle"
    clock.advance(notifier.poll)
    assert sent[-1] == "READY=1\nSTATUS=registered with tracker, idle"
    clock.advance(5.0)
    assert sum("READY=1" in m for m in sent) == 1


def test_status_is_sent_when_it_changes_and_not_repeated() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    daemon.ready = True
    _notifier(clock, daemon, sent).startService()
    daemon.text = "1 device, 0 leased, 2 waiting"
    clock.pump([0.25] * 8)
    assert sent == ["READY=1\nSTATUS=starting", "STATUS=1 device, 0 leased, 2 waiting"]


def test_the_watchdog_is_pinged_from_the_reactor_every_interval() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    _notifier(clock, daemon, sent, watchdog=2.0).startService()
    pings = lambda: sum(m == "WATCHDOG=1" for m in sent)  # noqa: E731
    assert pings() == 1
    clock.advance(1.9)
    assert pings() == 1
    clock.advance(0.1)
    assert pings() == 2
    clock.pump([2.0] * 5)
    assert pings() == 7


def test_stopping_is_announced_and_the_pings_stop() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    notifier = _notifier(clock, daemon, sent, watchdog=2.0)
    notifier.startService()
    notifier.stopService()
    assert sent[-1].startswith("STOPPING=1")
    count = len(sent)
    clock.advance(10.0)
    assert len(sent) == count
    assert not clock.getDelayedCalls()


def test_outside_systemd_the_notifier_sends_nothing_and_schedules_nothing() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    notifier = _notifier(clock, daemon, sent, address=None, watchdog=2.0)
    daemon.ready = True
    notifier.startService()
    clock.advance(10.0)
    notifier.stopService()
    assert sent == [] and not clock.getDelayedCalls()


def test_the_hang_switch_blocks_the_reactor_after_its_delay() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    blocked: list[float] = []
    notifier = _notifier(clock, daemon, sent, hang=3.0,
                         block=lambda: blocked.append(clock.seconds()))
    notifier.startService()
    clock.advance(2.9)
    assert blocked == []
    clock.advance(0.1)
    assert blocked == [3.0]


def test_stopping_before_the_hang_delay_cancels_the_hang() -> None:
    clock, daemon, sent = Clock(), _Daemon(), []
    blocked: list[float] = []
    notifier = _notifier(clock, daemon, sent, hang=3.0, block=lambda: blocked.append(1))
    notifier.startService()
    notifier.stopService()
    clock.advance(10.0)
    assert blocked == []


def test_a_failing_status_view_is_logged_once_and_the_watchdog_keeps_being_pinged() -> None:
    from twisted.logger import LogLevel, capturedLogs

    clock, sent = Clock(), []

    def broken() -> str:
        raise KeyError("connections")

    notifier = SystemdNotifier(clock, is_ready=lambda: True, status=broken,
                               address="/run/notify", watchdog=1.0, hang=None,
                               send=lambda message, address: sent.append(message))
    with capturedLogs() as events:
        notifier.startService()
        clock.pump([0.25] * 8)
    assert sent[0] == "READY=1\nSTATUS=running"
    assert sum(m == "WATCHDOG=1" for m in sent) == 3
    assert [e["log_level"] for e in events if "status" in e.get("log_format", "")] == [
        LogLevel.critical]
