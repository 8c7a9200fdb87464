"""Listening on Twisted endpoint strings, with the bound address logged and kept.

Unlike Twisted's C{StreamServerEndpointService}, a failed listen here stops the daemon
with a sentence saying which endpoint failed and why, instead of only logging it, and
L{Listener.ready} fires once the port is bound so readiness can wait for it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
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


def is_loopback(host: str) -> bool:
    """Whether C{host} (an IP address) is a loopback address (127.0.0.0/8, ::1, or
    127.x mapped into IPv6); names and the wildcard addresses are not."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _fields(endpoint: str) -> list[str]:
    """An endpoint string split at its unescaped colons, escapes removed."""
    fields, current, escaped = [], "", False
    for char in endpoint:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]


def endpoint_scope(endpoint: str) -> str:
    """Who can reach a server endpoint string: C{"loopback"} (a loopback interface),
    C{"local"} (a UNIX socket: this host only), C{"network"} (any other interface,
    including the default of all interfaces) or C{"unknown"} (C{systemd:} sockets, whose
    address is known only once bound, and endpoint types this does not know)."""
    kind, *rest = _fields(endpoint)
    kind = kind.lower()
    if kind in ("unix", "systemd"):
        return "local" if kind == "unix" else "unknown"
    if kind not in ("tcp", "tcp6", "ssl"):
        return "unknown"
    positional = [field for field in rest if "=" not in field]
    named = dict(field.split("=", 1) for field in rest if "=" in field)
    interface = named.get("interface", positional[1] if len(positional) > 1 else "")
    return "loopback" if is_loopback(interface) else "network"


def cleartext_host(endpoint: str) -> str | None:
    """The host a client endpoint string (C{tcp:host=H:port=P}, C{tls:...}) would send to
    in clear text beyond this host, or None (TLS, loopback, a UNIX socket)."""
    kind, *rest = _fields(endpoint)
    if kind.lower() not in ("tcp", "tcp6"):
        return None
    named = dict(field.split("=", 1) for field in rest if "=" in field)
    positional = [field for field in rest if "=" not in field]
    host = named.get("host", positional[0] if positional else "")
    return None if is_loopback(host) or host == "localhost" else host


def server_cleartext(endpoint: str) -> bool:
    """Whether a server endpoint string takes plain TCP from beyond this host."""
    kind = _fields(endpoint)[0].lower()
    return kind in ("tcp", "tcp6") and endpoint_scope(endpoint) == "network"


TLS_HOW = "see 'Set up TLS for a lab' in docs/security.md"
_warned: set[str] = set()


def warn_cleartext(what: str, where: str, how: str) -> bool:
    """Log, once per process for each C{what}, that secrets travel without TLS to or from
    C{where}, and C{how} to turn TLS on. Returns whether it logged now."""
    if what in _warned:
        return False
    _warned.add(what)
    log.warn(
        "{what} travel without TLS {where}: anyone on the network path can read and reuse"
        " them. Turn TLS on: {how} ({doc}).",
        what=what, where=where, how=how, doc=TLS_HOW,
    )
    return True


def bound_scope(address: Any) -> str:
    """L{endpoint_scope}'s answer for an address a port is bound to."""
    host = getattr(address, "host", None)
    if host is None:
        return "local" if getattr(address, "name", None) is not None else "unknown"
    return "loopback" if is_loopback(host) else "network"


@attrs.define(eq=False)
class Listener(service.Service):
    """Listen on one endpoint string for as long as the service runs.

    C{check}, if given, is asked about the address once the port is bound (for
    endpoints such as C{systemd:}, whose address is not in the string): a sentence back
    means this address must not be served, and the daemon stops as if the listen had
    failed.
    """

    reactor: Any
    what: str
    endpoint: str
    factory: Factory
    port: IListeningPort | None = None
    ready: Deferred[IListeningPort] = attrs.Factory(Deferred)
    check: Callable[[Any], str | None] | None = None

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
        refusal = self.check(port.getHost()) if self.check is not None else None
        if refusal is not None:
            port.stopListening()
            self._failed(Failure(RefusedAddress(refusal)))
            return
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


class RefusedAddress(Exception):
    """A port was bound to an address its daemon must not serve; the message says why
    and what to do."""


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
