"""Server-sent events: the dashboard's boards and queues, pushed as they change.

Each open page holds one C{GET /events} request; the feed writes the page's live
fragments to it whenever the tracker's state changed in more than its clocks. The
tracker pokes the feed when it applies scheduler effects, and the feed looks
C{coalesce} seconds later (a burst of grants costs one look); a short poll catches
anything else within C{interval} seconds. A comment line
every C{heartbeat} seconds lets proxies and browsers see that the stream is alive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

from .page import fragments
from .state import fingerprint

log = Logger(namespace="compass.dashboard")


@attrs.define(eq=False)
class LiveFeed:
    """The open event streams and what each was last sent."""

    reactor: Any
    state: Callable[[], dict[str, Any]]
    interval: float = 0.5
    heartbeat: float = 15.0
    coalesce: float = 0.1
    """After a poke, wait this long before looking: a burst of grants costs one look."""
    max_listeners: int = 64
    _listeners: dict[Request, bool] = attrs.Factory(dict)
    _last: str | None = None
    _loop: LoopingCall | None = None
    _poke: IDelayedCall | None = None
    _sent_at: float = 0.0

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def add(self, request: Request, admin: bool) -> bool:
        """Start streaming to C{request} (C{admin}: with the admin buttons). False when
        there are already C{max_listeners} streams."""
        if len(self._listeners) >= self.max_listeners:
            return False
        self._listeners[request] = admin
        request.notifyFinish().addBoth(lambda _: self._listeners.pop(request, None))
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Accel-Buffering", "no")
        request.write(b"retry: 2000\n\n")
        state = self.state()
        self._send(request, admin, state)
        if self._loop is None:
            self._last = fingerprint(state)
            self._sent_at = self.reactor.seconds()
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)
        return True

    def poke(self) -> None:
        """The tracker's state may have changed: look soon (within C{coalesce} seconds;
        the pokes in between cost nothing)."""
        if self._listeners and self._poke is None:
            self._poke = self.reactor.callLater(self.coalesce, self._poked)

    def _poked(self) -> None:
        self._poke = None
        self._tick()

    def stop(self) -> None:
        """Close every stream (the daemon is stopping)."""
        if self._poke is not None and self._poke.active():
            self._poke.cancel()
        self._poke = None
        self._stop_loop()
        for request in list(self._listeners):
            self._listeners.pop(request, None)
            request.finish()

    def _stop_loop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        if not self._listeners:
            self._stop_loop()
            return
        state = self.state()
        mark = fingerprint(state)
        if mark != self._last:
            self._last = mark
            self._sent_at = self.reactor.seconds()
            rendered: dict[bool, bytes] = {}
            for request, admin in list(self._listeners.items()):
                if admin not in rendered:
                    rendered[admin] = _event(state, admin)
                request.write(rendered[admin])
            return
        if self.reactor.seconds() - self._sent_at >= self.heartbeat:
            self._sent_at = self.reactor.seconds()
            for request in list(self._listeners):
                request.write(b": still here\n\n")

    def _send(self, request: Request, admin: bool, state: dict[str, Any]) -> None:
        request.write(_event(state, admin))


def _event(state: dict[str, Any], admin: bool) -> bytes:
    data = json.dumps({"fragments": fragments(state, admin)}, separators=(",", ":"))
    return b"event: state\ndata: " + data.encode("utf-8") + b"\n\n"
