"""Every way a session ends frees the board, even when a cleanup step fails, and a
session that cannot be set up gives the lease back with a sentence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import session as ps
from compassd.protocol.errors import Unavailable
from tests.fuzz.test_server_input import Board, Legit


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Board:
    monkeypatch.setattr(os, "chdir", lambda path: None)  # the executor runs in-process
    return Board(tmp_path / "work")


def _arenas(board: Board) -> list[str]:
    """This process's arena files for the board."""
    shm = Path("/dev/shm")
    pattern = f"compass-arena-{board.board.device}-{os.getpid()}-*"
    return sorted(p.name for p in shm.glob(pattern)) if shm.is_dir() else []


def test_a_session_ended_while_inputs_arrive_still_frees_the_board(board: Board) -> None:
    client = Legit(board)
    client.open()
    session = board.board.session
    assert session is not None
    # a run whose inputs are only partly sent: the server holds a view of the arena
    client.client.callRemote(ps.Run, model="m", inputs=[
        {"name": "x", "dtype": "int8", "shape": [4096], "nbytes": 4096}]).addErrback(
        lambda _: None)
    client.client.transport.write(b"\1" * 100)
    board.flush()
    board.board.end_session(session, "expired", "The lease expired.")
    board.flush()
    assert board.board.session is None
    assert board.ended == [session.lease]
    assert not list(board.workdir.glob("session-*"))
    assert _arenas(board) == []
    nxt = Legit(board)
    nxt.open()
    nxt.run()
    nxt.close()


def test_a_session_that_cannot_be_set_up_gives_the_lease_back(board: Board) -> None:
    board.board.arena_size = 1 << 62  # no machine maps that
    client = Legit(board)
    client.ok(client.client.callRemote(Hello, versions=[PROTOCOL_VERSION], role="client"))
    got: list[Any] = []
    client.client.callRemote(ps.OpenSession, ticket=board.issue()).addBoth(got.append)
    board.flush()
    (failure,) = got
    assert failure.check(Unavailable), failure
    assert "could not set up a session" in str(failure.value)
    assert board.board.session is None
    assert board.ended and board.ended[0].startswith("lease-")
    assert not list(board.workdir.glob("session-*"))
    assert _arenas(board) == []
    board.board.arena_size = 1 << 20
    again = Legit(board)
    again.open()
    again.run()
    again.close()


def test_an_answer_from_the_executor_just_after_the_session_ended_is_a_session_ended_error(
    board: Board
) -> None:
    import numpy as np
    from twisted.python.failure import Failure

    from compassd.protocol.errors import SessionEnded

    first = len(board.pumps)
    client = Legit(board)
    client_pump = board.pumps[first]
    client.open()
    session = board.board.session
    assert session is not None
    # the kill is sent, but the dying executor's answer is already on its way
    session.executor.kill = lambda: None  # type: ignore[method-assign]
    got: list[Any] = []
    d = client.client.callRemote(ps.Run, model="m", inputs=[
        {"name": "x", "dtype": "int8", "shape": [4], "nbytes": 4}])
    d.addBoth(got.append)
    client.client.transport.write(np.array([1, 2, 3, 4], dtype=np.int8).tobytes())
    client_pump.pump()  # the board has the run and asked its executor; no answer yet
    assert session.executor._pending, "the run should be at the executor"
    board.board.end_session(session, "expired", "The lease expired.")
    board.flush()  # now the executor's answer arrives
    (answer,) = got
    assert isinstance(answer, Failure) and answer.check(SessionEnded), answer
    assert "expired" in str(answer.value)


def test_a_revoked_session_ends_at_once_names_its_lease_and_is_confirmed(
    board: Board
) -> None:
    from compassd.protocol.errors import SessionEnded

    client = Legit(board)
    client.open()
    session = board.board.session
    assert session is not None
    board.board._revoked(session.lease, "expired", "The lease expired at the tracker.")
    board.flush()
    assert board.board.session is None
    assert board.ended == [session.lease], "the board confirms the end to the tracker"
    assert not list(board.workdir.glob("session-*"))
    assert _arenas(board) == []
    # what the client is told (a SessionClosing notice) and its next call's error
    assert client.connection.closing is not None
    reason, said = client.connection.closing
    assert reason == "expired" and session.lease in said, said
    with pytest.raises(SessionEnded) as caught:
        client.connection._active()
    assert str(caught.value) == said


def test_a_revoke_of_a_lease_the_board_does_not_serve_is_confirmed(board: Board) -> None:
    board.board._revoked("lease-0ld0ld00-3", "ended", "Lease lease-0ld0ld00-3 ended.")
    assert board.ended == ["lease-0ld0ld00-3"]
    assert board.board.serving() is None


def test_the_board_reports_the_session_it_serves(board: Board) -> None:
    assert board.board.serving() is None
    client = Legit(board)
    client.open()
    session = board.board.session
    assert session is not None
    lease, holder, left = board.board.serving()  # type: ignore[misc]
    assert (lease, holder) == (session.lease, session.user) and 0 < left <= 3600.0
    client.close()
    assert board.board.serving() is None
