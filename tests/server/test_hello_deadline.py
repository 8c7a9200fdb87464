"""On a board, hello needs no token: a client connection counts as not yet past hello
until a ticket has opened its session, so the hello timeout (counted from connecting)
closes one that says hello and then sits, and the caps count it until then."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.test import iosim

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import session as ps
from compassd.protocol.limits import ConnectionGuard
from tests.fuzz.test_server_input import Board, LegitClient


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Board:
    monkeypatch.setattr(os, "chdir", lambda path: None)
    return Board(tmp_path / "work")


def connect(board: Board, guard: ConnectionGuard) -> LegitClient:
    server = guard.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    client = LegitClient()
    board.pumps.append(iosim.connect(server, iosim.makeFakeServer(server),
                                     client, iosim.makeFakeClient(client)))
    return client


def answered(board: Board, d: Any) -> Any:
    got: list[Any] = []
    d.addBoth(got.append)
    board.flush()
    assert got
    return got[0]


def test_a_client_that_says_hello_but_opens_no_session_is_closed_at_the_hello_deadline(
    board: Board
) -> None:
    guard = ConnectionGuard(board.board.factory(), board.clock, what="board",
                            hello_timeout=30.0)
    idle, working = connect(board, guard), connect(board, guard)
    for client in (idle, working):
        answered(board, client.callRemote(Hello, versions=[PROTOCOL_VERSION], role="client"))
    assert guard.waiting() == 2  # hello alone does not count as shown who it is
    answered(board, working.callRemote(ps.OpenSession, ticket=board.issue()))
    assert guard.waiting() == 1
    board.clock.advance(29)
    board.flush()
    assert idle.alive
    board.clock.advance(1)
    board.flush()
    assert not idle.alive
    assert working.alive
