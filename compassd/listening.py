"""Listening on Twisted endpoint strings, with the bound address logged and kept.

Unlike Twisted's C{StreamServerEndpointService}, a failed listen here stops the daemon
with a sentence saying which endpoint failed and why, instead of only logging it, and
L{Listener.ready} fires once the port is bound so readiness can wait for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .addresses import format_address

log = Logger(namespace="compass.listen")


def describe_address(address: Any) -> str:
    """C{tcp 127.0.0.1:9190}-style text for a listening or peer address."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    kind = getattr(address, "type", "").lower() or "address"
    if host is not None and port is not None:
        return f"{kind} {format_address(host, port)}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):  # Twisted keeps UNIX socket paths as bytes
        name = os.fsdecode(name)
    return f"unix {name!r}" if name is not None else str(address)


@attrs.define(eq=False)
class Listener(service.Service):
    """Listen on one endpoint string for as long as the service runs."""

    reactor: Any
    what: str
    endpoint: str
    factory: Factory
    port: IListeningPort | None = None
    ready: Deferred[IListeningPort] = attrs.Factory(Deferred)

    def __attrs_post_init__(self) -> None:
        service.Service.__init__(self)

    def startService(self) -> None:
        service.Service.startService(self)
        try:
            listening = serverFromString(self.reactor, self.endpoint).listen(self.factory)
        except Exception:  # a malformed endpoint string raises at once
            self._failed(Failure())
            return
        listening.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info(
            "{what} listening on {address}",
            what=self.what,
            address=describe_address(port.getHost()),
        )
        self.ready.callback(port)

    def _failed(self, failure: Failure) -> None:
        log.critical(
            "{what} cannot listen on {endpoint}: {why}; stopping.",
            what=self.what,
            endpoint=self.endpoint,
            why=failure.getErrorMessage(),
        )
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)
        # A listen that fails while twistd starts the services fails before the reactor
        # runs: stop it as soon as it does, so the daemon exits instead of idling, and
        # exit with status 1 so systemd and scripts see the failure (twistd itself
        # would exit 0).
        if not hasattr(self.reactor, "callWhenRunning"):
            return
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        if getattr(self.reactor, "running", False):
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[None] | None:
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
