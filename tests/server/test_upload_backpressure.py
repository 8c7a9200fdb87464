"""Board backpressure while hashing is behind (issue 19): the board hashes an upload in a
thread while its bytes arrive; when the thread falls more than L{HASH_BACKLOG} bytes
behind, the board stops reading the connection (TCP then holds the client back) instead
of buffering without bound, and reads again once the thread is down to half of it.

The board is the fuzz tests' real L{BoardService} on a Clock; its thread runner is a
L{HandRunner}, so hashing makes progress only when the test says; the connection is a
L{StringTransport}, whose C{producerState} shows whether the board asked it to pause.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import session as ps
from compassd.server.session import HASH_BACKLOG, SessionConnection
from tests.fuzz._inprocess import box
from tests.fuzz.test_server_input import Board
from tests.server.test_upload import HandRunner

PIECE = 1 << 20
SIZE = HASH_BACKLOG + 8 * PIECE
BASE = os.urandom(PIECE)


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Board]:
    monkeypatch.setattr(os, "chdir", lambda path: None)
    monkeypatch.setattr("tests.fuzz.test_server_input.MAX_UPLOAD", SIZE * 2)
    b = Board(tmp_path / "work")
    b.board.in_thread = HandRunner()
    yield b
    if b.board.session is not None:  # its arena is in /dev/shm
        b.board.end_session(b.board.session, "closed", "The test ended.")


def pieces() -> Iterator[bytes]:
    """SIZE bytes of varied content, a MiB at a time."""
    base = BASE
    for i in range(SIZE // PIECE):
        yield base[i % 251:] + base[:i % 251]


@pytest.mark.parametrize("digest_after", [True, False], ids=["digest-after", "digest-first"])
def test_the_board_stops_reading_while_hashing_is_behind_and_reads_again_after(
        board: Board, digest_after: bool) -> None:
    runner = board.board.in_thread
    assert isinstance(runner, HandRunner)
    connection = SessionConnection(board.board)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5000))
    connection.makeConnection(transport)
    connection.dataReceived(box(Hello, 1, versions=[PROTOCOL_VERSION], role="client")
                            + box(ps.OpenSession, 2, ticket=board.issue()))
    board.flush()
    assert connection.session is not None, transport.value()
    digest = hashlib.sha256()
    for piece in pieces():
        digest.update(piece)
    if digest_after:
        connection.dataReceived(box(ps.UploadDigestAfter, 3, path="big.bin", size=SIZE))
    else:
        connection.dataReceived(box(ps.Upload, 3, path="big.bin", size=SIZE,
                                    sha256=digest.hexdigest()))
    sent = 0
    stream = pieces()
    for piece in stream:  # as a real transport would: no more data once paused
        connection.dataReceived(piece)
        sent += len(piece)
        if transport.producerState == "paused":
            break
    assert transport.producerState == "paused", "the board read on while hashing lagged"
    backlog = HASH_BACKLOG + PIECE
    assert sent == backlog  # it paused at the first piece past the limit, not later
    assert len(runner.jobs) == 1  # one batch in the thread, the rest queued in order
    function, args, d = runner.jobs.pop(0)
    d.callback(function(*args))  # the thread hashes its first piece: still far behind
    assert transport.producerState == "paused"
    runner.run_all()  # it catches up
    assert transport.producerState == "producing"
    for piece in stream:
        connection.dataReceived(piece)
        sent += len(piece)
        assert transport.producerState == "producing"  # 8 MiB more never passes it
    if digest_after:
        connection.dataReceived(digest.digest())
    runner.run_all()
    board.flush()
    (answer,) = amp.parseString(transport.value())[-1:]
    assert answer.get(amp.ANSWER) == b"3", answer
    stored = connection.session.directory.files / "big.bin"
    assert stored.stat().st_size == SIZE
    check = hashlib.sha256()
    with open(stored, "rb") as f:
        while block := f.read(PIECE):
            check.update(block)
    assert check.hexdigest() == digest.hexdigest()


def test_hashing_that_keeps_up_never_pauses_the_connection(board: Board) -> None:
    board.board.in_thread = HandRunner()
    runner = board.board.in_thread
    connection = SessionConnection(board.board)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5000))
    connection.makeConnection(transport)
    connection.dataReceived(box(Hello, 1, versions=[PROTOCOL_VERSION], role="client")
                            + box(ps.OpenSession, 2, ticket=board.issue()))
    board.flush()
    digest = hashlib.sha256()
    connection.dataReceived(box(ps.UploadDigestAfter, 3, path="big.bin", size=SIZE))
    for piece in pieces():
        connection.dataReceived(piece)
        digest.update(piece)
        runner.run_all()  # the thread keeps pace
        assert transport.producerState == "producing"
    connection.dataReceived(digest.digest())
    runner.run_all()
    board.flush()
    answer: Any = amp.parseString(transport.value())[-1]
    assert answer.get(amp.ANSWER) == b"3", answer
