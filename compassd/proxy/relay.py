"""Two connections joined into one byte stream, with backpressure both ways.

Once the proxy has opened a client's session on a board's data connection, it stops
reading AMP on either and copies bytes unchanged. Unlike
C{twisted.protocols.portforward}, which buffers without bound when one side reads
slower than the other writes, each direction here is a streaming producer registered on
the transport it writes to: when that transport's send buffer is full it pauses reading
from the other connection, and resumes it once the buffer drains. So the proxy holds at
most about one socket buffer per direction, whatever the speeds.

Either side closing closes the other once what it sent has been written. Dead peers are
found by TCP keepalives tuned to a minute (L{tune_keepalive}) on the relayed
connections; the board's control connection has its own heartbeat watch.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..protocol.peer import CompassPeer

if TYPE_CHECKING:
    from .metrics import ProxyMetrics

log = Logger(namespace="compass.proxy")

UNLIMITED = 1 << 62
"""The length of a relayed raw run: the rest of the connection."""

HOLD_LIMIT = 256 << 10
"""Bytes held for a side before the relay starts; past this, reading from it pauses."""


def tune_keepalive(transport: Any, idle: int = 30, interval: int = 10,
                   count: int = 3) -> bool:
    """Turn on TCP keepalives that notice a dead peer after C{idle + interval * count}
    seconds of silence, on C{transport}'s socket (or the one under a TLS transport).

    Returns whether a socket was found and tuned; other transports are left alone.
    """
    seen = 0
    while transport is not None and seen < 4:
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            try:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                                    ("TCP_KEEPCNT", count)):
                    option = getattr(socket, name, None)
                    if option is not None:
                        handle.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                return False
            return True
        transport = getattr(transport, "transport", None)
        seen += 1
    return False


@implementer(IPushProducer)
class _Direction:
    """Bytes read from C{source} written to C{sink}; registered on C{sink}'s transport,
    it pauses reading from C{source} while C{sink} cannot take more."""

    def __init__(self, source: CompassPeer, sink: CompassPeer | None,
                 count: Callable[[int], object] | None = None) -> None:
        self.source = source
        self.sink = sink
        self.count = count
        """Told the size of every chunk relayed (the proxy's metrics)."""
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.joined = False
        self.paused = False
        self.pauses = 0
        """How many times the sink's transport asked it to pause (for tests and stats)."""
        self.relayed = 0

    def receive(self, data: bytes) -> None:
        if self.joined:
            self.relayed += len(data)
            if self.count is not None:
                self.count(len(data))
            transport: Any = self.sink.transport if self.sink is not None else None
            if transport is not None:
                transport.write(data)
            return
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > HOLD_LIMIT and not self.paused:
            self._pause_source()

    def join(self) -> None:
        self.joined = True
        held, self.held, self.held_bytes = self.held, [], 0
        transport: Any = self.sink.transport if self.sink is not None else None
        if transport is None:
            return
        transport.registerProducer(self, True)
        before = self.pauses
        for data in held:
            self.receive(data)
        if self.paused and self.pauses == before:  # held bytes were all that paused it
            self.resumeProducing()

    def _pause_source(self) -> None:
        self.paused = True
        transport: Any = self.source.transport
        if transport is not None:
            transport.pauseProducing()

    # --- IPushProducer, for the sink's transport -------------------------------------

    def pauseProducing(self) -> None:
        self.pauses += 1
        self._pause_source()

    def resumeProducing(self) -> None:
        self.paused = False
        transport: Any = self.source.transport
        if transport is not None and self.source.alive:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        self.source.drop()


class Relay:
    """The byte stream between a client's connection and a board's data connection.

    L{capture} each side as soon as AMP must stop reading it (right after the box
    that ends the opening exchange); what arrives before L{join} is held. L{join} starts
    the copying; L{lost} is called by either side's C{connectionLost}.
    """

    def __init__(self, client: CompassPeer, board: CompassPeer | None = None, *,
                 metrics: ProxyMetrics | None = None) -> None:
        self.client = client
        self.board: CompassPeer | None = None
        self.metrics = metrics
        self.upstream = _Direction(client, None, self._counter("to-board"))
        self.downstream: _Direction | None = None
        self.captured: list[CompassPeer] = []
        self.closed = False
        if board is not None:
            self.set_board(board)

    def set_board(self, board: CompassPeer) -> None:
        """The board's data connection this client's bytes go to."""
        self.board = board
        self.upstream.sink = board
        self.downstream = _Direction(board, self.client, self._counter("to-client"))

    def _counter(self, direction: str) -> Callable[[int], object] | None:
        if self.metrics is None:
            return None
        return self.metrics.relayed.labels(direction).inc

    def _ended(self) -> None:
        if self.metrics is not None:
            self.metrics.session_ended(self.upstream.joined)

    def capture(self, peer: CompassPeer) -> None:
        """Stop parsing boxes on C{peer} after the current one: the rest is relayed."""
        if any(p is peer for p in self.captured):
            return
        self.captured.append(peer)
        direction = self.upstream if peer is self.client else self.downstream
        assert direction is not None, "set_board before capturing the board's side"
        done = peer.expect_raw(UNLIMITED, direction.receive)
        done.addErrback(lambda _: None)  # the connection closing ends it

    def join(self) -> None:
        """Start relaying; both sides must have been captured."""
        if self.closed or self.downstream is None:
            return
        for peer in (self.client, self.board):
            if peer is not None:
                tune_keepalive(peer.transport)
        self.upstream.join()
        self.downstream.join()

    def lost(self, peer: CompassPeer, reason: Failure | None = None) -> None:
        """C{peer}'s connection closed: close the other side once it has written what
        it holds."""
        if self.closed:
            return
        self.closed = True
        self._ended()
        for direction in (self.upstream, self.downstream):
            if direction is None or not direction.joined or direction.sink is None:
                continue
            sink: Any = direction.sink.transport
            if sink is not None and direction.sink is not peer:
                sink.unregisterProducer()
        other = self.board if peer is self.client else self.client
        if other is not None and other.alive:
            other.drop()

    def close(self) -> None:
        """End both sides now (the board went away, or the proxy is stopping)."""
        if not self.closed:
            self._ended()
        self.closed = True
        for peer in (self.client, self.board):
            if peer is not None and peer.alive:
                peer.drop()
