"""Clear text is a choice the user sees: a client that would send a token (or, to a board,
a ticket) without TLS to another host logs one warning naming how to turn TLS on.

Connections go to a MemoryReactorClock: the endpoint is built and dialled as for real,
but nothing leaves this host.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from compassd import listening
from compassd.client._connect import connect
from compassd.client.asynchronous import TRACKER
from compassd.client.session import BOARD
from compassd.protocol.peer import CompassPeer


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "without TLS" in text:
            lines.append(text)

    saved = set(listening._warned)
    listening._warned.clear()
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)
    listening._warned.clear()
    listening._warned.update(saved)


def dial(reactor: MemoryReactorClock, daemon: Any, *, host: str = "127.0.0.1",
         endpoint: str | None = None, token: str | None = None) -> None:
    connect(reactor, daemon, CompassPeer, f"{host}:9190", host=host, port=9190,
            endpoint=endpoint, tls=None, timeout=5, role="client", token=token,
            user="ann", then=lambda peer, where, answer: answer)


def test_a_token_to_another_host_in_clear_text_is_warned_about_once(
        warnings: list[str]) -> None:
    reactor = MemoryReactorClock()
    dial(reactor, TRACKER, endpoint="tcp:host=192.0.2.7:port=9190", token="secret")
    dial(reactor, TRACKER, endpoint="tcp:192.0.2.7:9190", token="secret")
    assert len(reactor.tcpClients) == 2, "the client did not dial"
    assert len(warnings) == 1
    assert "Tokens sent by this client travel without TLS to the tracker at 192.0.2.7" \
        in warnings[0]
    assert "--ca CA.pem" in warnings[0] and "Set up TLS for a lab" in warnings[0]


def test_a_ticket_to_a_board_in_clear_text_is_warned_about(warnings: list[str]) -> None:
    dial(MemoryReactorClock(), BOARD, endpoint="tcp:host=192.0.2.8:port=9191")
    assert len(warnings) == 1 and "Tickets sent by this client" in warnings[0]


@pytest.mark.parametrize("where", [
    {"endpoint": "tcp:host=127.0.0.1:port=9190", "token": "secret"},
    {"endpoint": "tcp:host=localhost:port=9190", "token": "secret"},
    {"endpoint": "unix:/run/compass.sock", "token": "secret"},
    {"endpoint": "tcp:host=192.0.2.7:port=9190"},  # no token: nothing secret goes
])
def test_loopback_unix_or_nothing_secret_is_not_warned_about(
        warnings: list[str], where: dict[str, Any]) -> None:
    dial(MemoryReactorClock(), TRACKER, **where)
    assert warnings == []
