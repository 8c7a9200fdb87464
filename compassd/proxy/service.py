"""``compass-proxy`` as a service: its listeners, the boards behind it, their channels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ..access import Access, TokensFileError, load_tokens
from ..addresses import advertised_address
from ..ratelimit import OpenLimit
from .connection import ProxyConnection
from .pairing import Channel, Pairing, too_late

if TYPE_CHECKING:
    from .metrics import ProxyMetrics

log = Logger(namespace="compass.proxy")


class ProxyService(service.MultiService):
    """Front the boards that dial in, for the tracker at C{tracker} (an endpoint string,
    or a client endpoint).

    C{advertise} (C{HOST:PORT}) is the address registered for every board behind the
    proxy; without it, the host and port of the first listening port are used.
    C{dial_timeout} is how long a client waits for its board to connect back;
    C{idle_timeout} how long a new connection may stay silent (a board's control
    connection, once registered, three heartbeat intervals). C{open_limit} bounds how
    often one source address may open sessions (each costs the tracker a ticket check;
    None: no bound).
    """

    def __init__(self, reactor: Any, tracker: Any, advertise: str | None = None, *,
                 dial_timeout: float = 10.0, idle_timeout: float = 60.0,
                 max_pending: int = 64, access: Access | None = None,
                 open_limit: OpenLimit | None = None,
                 tokens_path: str | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.open_limit = open_limit
        self.access = access
        """The tokens every hello must carry (L{Access.identify}); None: the proxy takes
        any hello and leaves checking to the tracker (loopback only, or
        --insecure-no-auth)."""
        self.tokens_path = tokens_path
        """The tokens file L{reload_access} reads again (None: there is none)."""
        self.tracker = tracker
        self.advertise = advertise
        self.dial_timeout = dial_timeout
        self.idle_timeout = idle_timeout
        self.pairing: Pairing[ProxyConnection, ProxyConnection] = Pairing(
            max_pending=max_pending)
        self.connections: set[ProxyConnection] = set()
        self.metrics: ProxyMetrics | None = None
        """Where relays count sessions and bytes (--metrics)."""
        self._expiry: IDelayedCall | None = None

    def reload_access(self) -> bool:
        """Read the tokens file again (on SIGHUP), as compass-tracker does: connections
        already greeted stay up as they are; new hellos use the new table. A file with a
        mistake leaves the old table in force (and says so in the log). Returns whether
        the table changed."""
        if self.tokens_path is None or self.access is None:
            log.info("SIGHUP: this proxy has no tokens file (--tokens) to read again")
            return False
        try:
            tokens = load_tokens(self.tokens_path)
        except TokensFileError as e:
            log.error("kept the old tokens: {why}", why=str(e))
            return False
        self.access = attrs.evolve(self.access, tokens=tokens)
        log.info("reloaded {count} tokens from {path}", count=len(tokens),
                 path=self.tokens_path)
        return True

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: ProxyConnection(self))

    def listening(self, port: IListeningPort) -> IListeningPort:
        """Called when a port is bound: without --advertise, the first one is it."""
        if not self.advertise:
            host: Any = port.getHost()
            self.advertise = advertised_address(host.host, host.port)
            log.info("boards behind this proxy are registered as {address}",
                     address=self.advertise)
        return port

    def advertised(self) -> str:
        return self.advertise or ""

    def stopService(self) -> Any:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        for connection in list(self.connections):
            connection.drop()
        return super().stopService()

    # --- channels --------------------------------------------------------------------

    def open_channel(self, device: str | None, client: ProxyConnection
                     ) -> Channel[ProxyConnection, ProxyConnection]:
        channel = self.pairing.open_channel(device, client, self.reactor.seconds(),
                                            self.dial_timeout)
        self._schedule()
        return channel

    def _schedule(self) -> None:
        if self._expiry is None or not self._expiry.active():
            self._expiry = self.reactor.callLater(self.dial_timeout, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        for channel in self.pairing.expired(self.reactor.seconds()):
            channel.waiter.board_failed(too_late(channel.device, self.dial_timeout))
        if self.pairing.pending():
            self._schedule()

    def open_channels(self) -> int:
        """Clients whose session is being set up or relayed now."""
        return sum(1 for c in self.connections
                   if c.mode == "client" and c.relay is not None and not c.relay.closed)

    def summary(self) -> dict[str, Any]:
        """What the proxy fronts now (for logs and tests)."""
        return {"devices": self.pairing.devices(), "pending": self.pairing.pending(),
                "connections": len(self.connections)}
