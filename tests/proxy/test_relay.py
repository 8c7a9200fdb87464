"""The relay's backpressure and closing, in memory.

The board's transport here behaves like Twisted's TCP transport towards a registered
streaming producer: past C{limit} unsent bytes it calls C{pauseProducing}, and once the
peer has read them (L{_SlowTransport.drain}) C{resumeProducing}.
"""

from __future__ import annotations

import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from compassd.protocol.peer import CompassPeer
from compassd.proxy import Relay, tune_keepalive


class _SlowTransport(StringTransport):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.streaming_producer = None

    def registerProducer(self, producer, streaming):  # type: ignore[no-untyped-def]
        super().registerProducer(producer, streaming)
        self.streaming_producer = producer

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self.streaming_producer = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.limit and self.streaming_producer is not None:
            self.streaming_producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.streaming_producer is not None:
            self.streaming_producer.resumeProducing()
        return data


def _peer(transport: StringTransport) -> CompassPeer:
    peer = CompassPeer()
    peer.makeConnection(transport)
    return peer


def _joined(limit: int = 64 << 10):
    client_transport = _SlowTransport(limit)
    board_transport = _SlowTransport(limit)
    client, board = _peer(client_transport), _peer(board_transport)
    relay = Relay(client, board)
    relay.capture(client)
    relay.capture(board)
    relay.join()
    return relay, client, board, client_transport, board_transport


def test_a_slow_board_pauses_reading_from_the_client_until_it_drains() -> None:
    relay, client, board, client_transport, board_transport = _joined()
    chunk = b"u" * 16384
    sent = 0
    while client_transport.producerState == "producing" and sent < 10 << 20:
        client.dataReceived(chunk)
        sent += len(chunk)
    assert client_transport.producerState == "paused"
    assert sent <= (64 << 10) + len(chunk), "the proxy kept reading past the buffer"
    assert board_transport.drain() == b"u" * sent
    assert client_transport.producerState == "producing"
    assert relay.upstream.pauses == 1


def test_a_slow_client_pauses_reading_from_the_board_until_it_drains() -> None:
    relay, client, board, client_transport, board_transport = _joined(limit=1000)
    board.dataReceived(b"d" * 1500)
    assert board_transport.producerState == "paused"
    assert client_transport.drain() == b"d" * 1500
    assert board_transport.producerState == "producing"


def test_bytes_before_the_join_are_held_in_order_and_relayed_after_it() -> None:
    client_transport, board_transport = _SlowTransport(1 << 20), _SlowTransport(1 << 20)
    client, board = _peer(client_transport), _peer(board_transport)
    relay = Relay(client)
    relay.capture(client)
    client.dataReceived(b"early ")
    relay.set_board(board)
    relay.capture(board)
    board.dataReceived(b"answer")
    assert board_transport.value() == b"" and client_transport.value() == b""
    relay.join()
    client.dataReceived(b"late")
    assert board_transport.value() == b"early late"
    assert client_transport.value() == b"answer"


def test_holding_too_much_before_the_join_pauses_the_sender() -> None:
    client_transport = _SlowTransport(1 << 30)
    client = _peer(client_transport)
    relay = Relay(client)
    relay.capture(client)
    for _ in range(40):
        client.dataReceived(b"x" * 16384)
    assert client_transport.producerState == "paused"
    board_transport = _SlowTransport(1 << 30)
    relay.set_board(_peer(board_transport))
    relay.capture(relay.board)  # type: ignore[arg-type]
    relay.join()
    assert len(board_transport.value()) == 40 * 16384
    assert client_transport.producerState == "producing"


def test_either_side_closing_closes_the_other() -> None:
    relay, client, board, client_transport, board_transport = _joined()
    client.dataReceived(b"last words")
    client.connectionLost(Failure(ConnectionDone()))
    relay.lost(client)  # what the proxy's connection does when it is lost
    assert board_transport.disconnecting
    assert board_transport.value() == b"last words"
    relay, client, board, client_transport, board_transport = _joined()
    board.connectionLost(Failure(ConnectionDone()))
    relay.lost(board)
    assert client_transport.disconnecting


def test_tune_keepalive_sets_short_tcp_keepalives_on_a_real_socket() -> None:
    class _Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def getHandle(self) -> socket.socket:
            return self.sock

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert tune_keepalive(_Transport(sock), idle=30, interval=10, count=3)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    assert not tune_keepalive(StringTransport())
