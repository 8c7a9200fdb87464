"""Tell systemd how a daemon is doing: readiness, status lines and watchdog pings.

systemd's notification protocol is one datagram per message on the unix socket named by
C{$NOTIFY_SOCKET} (a leading C{@} means the abstract namespace), so it is spoken here with
a plain socket and no dependency. Twisted has no support for it (22.4 and 26.x alike).

L{SystemdNotifier} is a service that sends C{READY=1} once the daemon says it is ready
(its listeners are bound and, for a board server, the device is registered), C{STATUS=}
lines whenever the daemon's one-line summary changes, C{WATCHDOG=1} from the reactor at
half of C{$WATCHDOG_USEC} (so a wedged reactor stops the pings and systemd restarts the
daemon), and C{STOPPING=1} when it stops. Outside systemd (no C{$NOTIFY_SOCKET}) it does
nothing at all.

C{COMPASS_TEST_HANG_AFTER=SECONDS} is a switch for tests only: it makes the reactor block
for good that long after start, so a test can prove that the watchdog restarts a hung
daemon. Never set it in production.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ._twisted_private import systemd_sockets

log = Logger(namespace="compass.systemd")

HANG_AFTER = "COMPASS_TEST_HANG_AFTER"
"""The test-only switch: seconds after start at which the reactor blocks for good."""


def notify_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The address of systemd's notification socket, or C{None} outside systemd."""
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    return path


def notify(message: str, address: str | None) -> bool:
    """Send one notification (C{"READY=1\\nSTATUS=..."}); return whether it was sent.

    Sending never raises: a daemon must not die because systemd went away.
    """
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode("utf-8", "replace"))
    except OSError as e:
        log.warn("could not notify systemd at {address!r}: {why}", address=address,
                 why=e.strerror or str(e))
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """How often to ping the watchdog: half of C{$WATCHDOG_USEC}, in seconds, or C{None}
    when no watchdog is asked for this process (C{$WATCHDOG_PID} names another one)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wanted_pid = env.get("WATCHDOG_PID", "")
    if wanted_pid and wanted_pid != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2e6


def hang_after(environ: Mapping[str, str] | None = None) -> float | None:
    """The test-only hang delay from C{$COMPASS_TEST_HANG_AFTER}, or C{None}."""
    text = (os.environ if environ is None else environ).get(HANG_AFTER, "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def inherited_sockets(environ: Mapping[str, str] | None = None) -> int:
    """How many listening sockets systemd passed this process (socket activation).

    Twisted reads and deletes C{LISTEN_PID}/C{LISTEN_FDS} when C{twisted.internet.endpoints}
    is first imported, keeping what it found for its C{systemd:} endpoints, so that record
    is asked first; the environment is read when Twisted has not looked yet.
    """
    found = systemd_sockets()
    if found:
        return found
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return 0
    try:
        return max(0, int(env.get("LISTEN_FDS", "0")))
    except ValueError:
        return 0


def default_listen(fallback: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The endpoints to listen on when none were given: every socket systemd passed
    (C{systemd:domain=INET:index=N}), else C{fallback}."""
    count = inherited_sockets(environ)
    if count:
        return [f"systemd:domain=INET:index={i}" for i in range(count)]
    return [fallback]


def _block_forever() -> None:  # pragma: no cover - only ever run by the hang test
    while True:
        time.sleep(3600)


@attrs.define(eq=False)
class SystemdNotifier(service.Service):
    """Keep systemd told: READY once C{is_ready()}, STATUS when C{status()} changes,
    watchdog pings at C{watchdog} seconds, STOPPING at stop.

    C{is_ready} and C{status} are polled every C{poll} seconds on the reactor's clock;
    both are cheap views of the daemon's state. C{send} defaults to L{notify} on the
    socket in C{$NOTIFY_SOCKET}; without one the service does nothing.
    """

    reactor: Any
    is_ready: Callable[[], bool]
    status: Callable[[], str]
    address: str | None = attrs.Factory(notify_address)
    watchdog: float | None = attrs.Factory(watchdog_interval)
    hang: float | None = attrs.Factory(hang_after)
    poll: float = 0.25
    send: Callable[[str, str | None], object] = notify
    block: Callable[[], None] = _block_forever
    ready_sent: bool = False
    last_status: str | None = None
    _poller: LoopingCall | None = None
    _pinger: LoopingCall | None = None
    _hang_call: IDelayedCall | None = None
    _view_failed: bool = False

    def __attrs_post_init__(self) -> None:
        service.Service.__init__(self)

    def startService(self) -> None:
        service.Service.startService(self)
        if self.hang is not None:
            log.warn("{var} is set: the reactor will hang {seconds:g} s from now (a test"
                     " switch, never for production)", var=HANG_AFTER, seconds=self.hang)
            self._hang_call = self.reactor.callLater(self.hang, self._hang)
        if self.address is None:
            return
        self._poller = LoopingCall(self._check)
        self._poller.clock = self.reactor
        self._poller.start(self.poll, now=True)
        if self.watchdog is not None:
            self._pinger = LoopingCall(self._ping)
            self._pinger.clock = self.reactor
            self._pinger.start(self.watchdog, now=True)

    def stopService(self) -> None:
        service.Service.stopService(self)
        for loop in (self._poller, self._pinger):
            if loop is not None and loop.running:
                loop.stop()
        self._poller = self._pinger = None
        if self._hang_call is not None and self._hang_call.active():
            self._hang_call.cancel()
        self._hang_call = None
        if self.address is not None:
            self.send("STOPPING=1\nSTATUS=stopping", self.address)

    def _check(self) -> None:
        ready = self._view(lambda: self.ready_sent or self.is_ready(), self.ready_sent)
        text = self._view(self.status, "running")
        fields = []
        if not self.ready_sent and ready:
            self.ready_sent = True
            fields.append("READY=1")
        if text != self.last_status:
            self.last_status = text
            fields.append(f"STATUS={text}")
        if fields:
            self.send("\n".join(fields), self.address)

    def _view(self, view: Callable[[], Any], fallback: Any) -> Any:
        """C{view()}, or C{fallback} if it raises: a broken view must stop neither
        readiness nor the watchdog pings (it is logged once)."""
        try:
            return view()
        except Exception:
            if not self._view_failed:
                self._view_failed = True
                log.failure("cannot compute the readiness or status for systemd")
            return fallback

    def _ping(self) -> None:
        self.send("WATCHDOG=1", self.address)

    def _hang(self) -> None:
        self._hang_call = None
        log.critical("{var}: hanging the reactor now, as the test asked", var=HANG_AFTER)
        self.block()


def plural(count: int, word: str) -> str:
    """C{"1 device"}, C{"3 devices"}."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
