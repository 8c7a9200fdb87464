"""Size limits on the values compassd accepts from the network.

AMP itself caps one value at 65,535 bytes; these limits are far below it so that a list
of them still fits in one value and so that a status table stays readable. A value over
a limit is refused with :class:`~compassd.protocol.errors.BadRequest` naming the limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp

from .errors import BadRequest, LimitExceeded

log = Logger(namespace="compass.limits")

MAX_NAME = 64
"""Characters in a device key, a device name, a user name or a tag."""

MAX_TEXT = 256
"""Characters in a free-text field (device info, a reason, an address)."""

MAX_TAGS = 16
"""Tags on one device or one request."""

MAX_INFO_FIELDS = 16
"""Info fields a device reports."""

MAX_PAGE = 100
"""Entries in one page of a listing (each entry is bounded, so a page fits in 64 KiB)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]*$")


def check_name(what: str, value: str) -> str:
    """Return C{value} if it is an acceptable name, else raise L{BadRequest} saying why."""
    if not value:
        raise BadRequest(f"The {what} is empty; give a name such as 'npu-x2'.")
    if len(value) > MAX_NAME:
        raise BadRequest(
            f"The {what} is {len(value)} characters long; the limit is {MAX_NAME}."
        )
    if not _NAME.match(value):
        raise BadRequest(
            f"The {what} {value!r} has characters other than letters, digits and ._:@+=-"
            " (or does not start with a letter or digit)."
        )
    return value


def check_text(what: str, value: str) -> str:
    """Return C{value} if it is at most L{MAX_TEXT} characters, else raise L{BadRequest}."""
    if len(value) > MAX_TEXT:
        raise BadRequest(
            f"The {what} is {len(value)} characters long; the limit is {MAX_TEXT}."
        )
    return value


def check_tags(what: str, tags: Iterable[str]) -> frozenset[str]:
    """Validate a collection of tags and return it as a frozen set."""
    tags = list(tags)
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"The {what} has {len(tags)} tags; the limit is {MAX_TAGS}.")
    return frozenset(check_name("tag", tag) for tag in tags)


def check_seconds(what: str, value: float | None, *, allow_none: bool = True) -> float | None:
    """Validate a duration in seconds: positive and finite, or None where allowed."""
    if value is None:
        if allow_none:
            return None
        raise BadRequest(f"The {what} is required.")
    if not (value > 0 and value < 10 * 365 * 86400):
        raise BadRequest(f"The {what} must be a positive number of seconds, not {value!r}.")
    return float(value)


# --- connections ----------------------------------------------------------------------

MAX_CONNECTIONS_PER_ADDRESS = 64
"""Default cap on connections from one IP address that have not completed hello yet (per
daemon). Connections that said hello are not counted: a lab behind one NAT address is not
locked out by one of its users."""

MAX_UNAUTHENTICATED = 256
"""Default cap on connections, from all addresses together, that have not completed
hello yet (per daemon). Each holds at most one box of 16 KiB before hello."""

HELLO_TIMEOUT = 30.0
"""Default seconds a new connection has to complete the hello exchange."""


class _Refusal(amp.AMP):
    """Answers whatever is asked with L{LimitExceeded} (the sentence), then hangs up;
    a peer that asks nothing is hung up on after a few seconds."""

    def __init__(self, sentence: str, reactor: Any) -> None:
        super().__init__()
        self.sentence = sentence
        self.reactor = reactor
        self._give_up: Any = None

    def locateResponder(self, name: bytes) -> Any:
        def refuse(box: amp.AmpBox) -> Any:
            self.reactor.callLater(0, self.hang_up)
            raise amp.RemoteAmpError(LimitExceeded.code, self.sentence)

        return refuse

    def hang_up(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._give_up = self.reactor.callLater(5.0, self.hang_up)

    def connectionLost(self, reason: Any = connectionDone) -> None:
        if self._give_up is not None and self._give_up.active():
            self._give_up.cancel()
        super().connectionLost(reason)


class ConnectionGuard(Factory):
    """Wrap a factory: cap the connections that have not completed the hello exchange
    (their protocol's C{greeted}), per peer address and in all, and close any connection
    that has not completed it within C{hello_timeout} seconds of connecting.

    A connection over the per-address cap is answered with L{LimitExceeded} naming the
    cap on its first command, then closed. At the global cap (C{unauthenticated}) a new
    connection is still taken: the oldest connection not yet greeted from the address
    that holds the most such connections is closed for it. A peer that says hello stops
    counting, so one that authenticates is never refused because of others that do not,
    and many addresses cannot together hold more than the global cap.
    """

    def __init__(self, wrapped: Factory, reactor: Any, *, what: str,
                 per_address: int | None = MAX_CONNECTIONS_PER_ADDRESS,
                 hello_timeout: float | None = HELLO_TIMEOUT,
                 unauthenticated: int | None = MAX_UNAUTHENTICATED) -> None:
        self.wrapped = wrapped
        self.reactor = reactor
        self.what = what
        self.per_address = per_address
        self.hello_timeout = hello_timeout
        self.unauthenticated = unauthenticated
        self.open: dict[str, int] = {}
        """Connections open now, by address."""
        self.pending: dict[str, list[Any]] = {}
        """Connections not yet greeted, by address, oldest first (pruned when counted)."""

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def _waiting(self, host: str) -> list[Any]:
        """The connections from C{host} that have not said hello yet."""
        waiting = [p for p in self.pending.get(host, ()) if not _past_hello(p)]
        if waiting:
            self.pending[host] = waiting
        else:
            self.pending.pop(host, None)
        return waiting

    def waiting(self) -> int:
        """How many connections have not said hello yet, from all addresses."""
        return sum(len(self._waiting(host)) for host in list(self.pending))

    def _make_room(self, host: str) -> None:
        """At the global cap, close the oldest connection not yet greeted from the
        address holding the most of them."""
        if self.unauthenticated is None or self.waiting() < self.unauthenticated:
            return
        crowded = max(self.pending, key=lambda h: (len(self.pending[h]), h == host))
        victim = self.pending[crowded].pop(0)
        log.warn("closed a connection from {host} that had not said hello: {count}"
                 " connections were waiting for hello, the most this {what} allows",
                 host=crowded, count=self.unauthenticated, what=self.what)
        _hang_up(victim)

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", addr))
        count = len(self._waiting(host))
        if self.per_address is not None and count >= self.per_address:
            log.warn("refused a connection from {host}: it already has {count} open to"
                     " this {what} that have not said hello", host=host, count=count,
                     what=self.what)
            return _Refusal(
                f"{host} already has {count} connections open to this {self.what} that"
                " have not said hello, the most it allows from one address; close some,"
                " or raise --max-connections-per-address.", self.reactor)
        self._make_room(host)
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        self.open[host] = self.open.get(host, 0) + 1
        self.pending.setdefault(host, []).append(protocol)
        timer = None
        if self.hello_timeout is not None:
            timer = self.reactor.callLater(self.hello_timeout, self._no_hello, protocol,
                                           host)
        lost = protocol.connectionLost

        def connection_lost(reason: Any = connectionDone) -> None:
            left = self.open.get(host, 1) - 1
            if left:
                self.open[host] = left
            else:
                self.open.pop(host, None)
            waiting = self.pending.get(host)
            if waiting is not None and protocol in waiting:
                waiting.remove(protocol)
                if not waiting:
                    del self.pending[host]
            if timer is not None and timer.active():
                timer.cancel()
            lost(reason)

        protocol.connectionLost = connection_lost  # type: ignore[method-assign]
        return protocol

    def _no_hello(self, protocol: Any, host: str) -> None:
        if _past_hello(protocol) or protocol.transport is None:
            return
        log.warn("closed a connection from {host}: no hello within {timeout:g} s",
                 host=host, timeout=self.hello_timeout)
        _hang_up(protocol)


def _past_hello(protocol: Any) -> bool:
    """Whether C{protocol}'s peer has shown who it is: its C{authenticated} where it has
    one (a board's client, whose hello needs no token, shows it with a ticket), else
    its C{greeted}."""
    return bool(getattr(protocol, "authenticated", getattr(protocol, "greeted", True)))


def _hang_up(protocol: Any) -> None:
    transport: Any = protocol.transport
    if transport is not None:
        (getattr(transport, "abortConnection", None) or transport.loseConnection)()
