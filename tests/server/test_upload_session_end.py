"""An upload whose session ends while the board still verifies it (issue 20, found by the
chaos soak): the client is told its session ended and why, nothing of the upload is left
(no file, no partial file, no model cache entry or temporary link), and the board is free.

The board is a real L{BoardService} on a Clock (the fuzz tests' harness: a fake tracker
link, an in-process executor, real session directories and a real model cache). Its
thread runner is a L{HandRunner}: the hashing "thread" finishes only when the test says,
so the session can end at the exact moment the soak hit: every byte has arrived and the
board waits for the last of them to be hashed before it stores the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import session as ps
from compassd.protocol.errors import SessionEnded
from compassd.server.modelcache import ModelCache
from compassd.server.session import SessionConnection
from tests.fuzz.test_server_input import Board, LegitClient
from tests.server.test_upload import HandRunner

DATA = os.urandom(300_000)
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Board]:
    monkeypatch.setattr(os, "chdir", lambda path: None)
    b = Board(tmp_path / "work")
    b.board.in_thread = HandRunner()
    b.board.cache = ModelCache.open(tmp_path / "cache", 64 << 20)
    yield b
    if b.board.session is not None:  # its arena is in /dev/shm
        b.board.end_session(b.board.session, "closed", "The test ended.")


@pytest.fixture
def errors() -> Any:
    """Every event the board logs as an error (an undeclared exception in a responder
    is logged so, with its traceback)."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


class Client:
    def __init__(self, board: Board) -> None:
        self.b = board
        self.peer = LegitClient()
        self.connection = SessionConnection(board.board)
        board.pumps.append(iosim.connect(
            self.connection, iosim.makeFakeServer(self.connection),
            self.peer, iosim.makeFakeClient(self.peer)))

    def outcome(self, d: Any) -> list[Any]:
        got: list[Any] = []
        d.addBoth(got.append)
        self.b.flush()
        return got

    def open(self) -> None:
        assert not isinstance(self.outcome(self.peer.callRemote(
            Hello, versions=[PROTOCOL_VERSION], role="client"))[0], Failure)
        assert not isinstance(self.outcome(self.peer.callRemote(
            ps.OpenSession, ticket=self.b.issue()))[0], Failure)

    def upload(self, digest_after: bool) -> list[Any]:
        """Send the whole upload; the answer waits for the hashing runner."""
        if digest_after:
            d = self.peer.callRemote(ps.UploadDigestAfter, path="blob.bin", size=len(DATA))
            self.peer.transport.write(DATA + bytes.fromhex(DIGEST))
        else:
            d = self.peer.callRemote(ps.Upload, path="blob.bin", size=len(DATA),
                                     sha256=DIGEST)
            self.peer.transport.write(DATA)
        return self.outcome(d)


def left_behind(board: Board) -> list[str]:
    """Files anywhere under the work directory and the model cache."""
    assert board.board.cache is not None
    found = []
    for root in (board.workdir, board.board.cache.root):
        for parent, _, names in os.walk(root):
            found += [os.path.join(parent, name) for name in names]
    return [f for f in found if "compass-" not in os.path.basename(f)]


def hashing_done(board: Board) -> None:
    runner = board.board.in_thread
    assert isinstance(runner, HandRunner)
    assert runner.jobs, "nothing was being hashed"
    runner.run_all()
    board.flush()


def the_board_serves_again(board: Board) -> None:
    assert board.board.session is None
    again = Client(board)
    again.open()
    assert board.board.session is not None
    answer = again.upload(digest_after=False)
    assert answer == []
    hashing_done(board)
    assert answer == [{}], answer
    assert (board.board.session.directory.files / "blob.bin").read_bytes() == DATA


@pytest.mark.parametrize("digest_after", [False, True], ids=["digest-first", "digest-after"])
def test_a_lease_that_expires_while_the_upload_is_hashed_says_the_session_ended(
        board: Board, errors: list[dict[str, Any]], digest_after: bool) -> None:
    client = Client(board)
    client.open()
    session = board.board.session
    assert session is not None
    answer = client.upload(digest_after)
    assert answer == []  # every byte is in; the board waits for its hashing thread
    board.clock.advance(3601)  # the lease (3600 s) expires meanwhile
    assert session.ended == "expired"
    hashing_done(board)
    (failure,) = answer
    assert isinstance(failure, Failure) and failure.check(SessionEnded), failure
    message = failure.getErrorMessage()
    assert "blob.bin" in message and "nothing was stored" in message
    assert "The lease expired" in message  # why it ended, in the board's words
    assert left_behind(board) == []
    assert board.board.cache is not None and len(board.board.cache) == 0
    assert errors == []
    the_board_serves_again(board)


def test_a_client_that_vanishes_while_its_upload_is_hashed_leaves_nothing_and_no_error(
        board: Board, errors: list[dict[str, Any]]) -> None:
    client = Client(board)
    client.open()
    session = board.board.session
    assert session is not None
    answer = client.upload(digest_after=False)
    assert answer == []
    client.peer.transport.loseConnection()
    board.flush()
    assert session.ended == "client-lost"
    hashing_done(board)
    assert left_behind(board) == []
    assert board.board.cache is not None and len(board.board.cache) == 0
    assert errors == [], [e.get("log_format") for e in errors]
    assert board.ended == [session.lease]  # the tracker was told, once
    the_board_serves_again(board)


def test_a_lease_that_expires_during_the_byte_run_ends_the_upload_with_session_ended(
        board: Board, errors: list[dict[str, Any]]) -> None:
    client = Client(board)
    client.open()
    d = client.peer.callRemote(ps.Upload, path="blob.bin", size=len(DATA), sha256=DIGEST)
    client.peer.transport.write(DATA[:1000])
    board.flush()
    board.clock.advance(3601)
    client.peer.transport.write(DATA[1000:])  # the rest still arrives, and is read
    answer = client.outcome(d)
    runner = board.board.in_thread
    assert isinstance(runner, HandRunner)
    runner.run_all()
    board.flush()
    (failure,) = answer
    assert isinstance(failure, Failure) and failure.check(SessionEnded), failure
    assert "The lease expired" in failure.getErrorMessage()
    assert left_behind(board) == []
    assert errors == []
    the_board_serves_again(board)


def test_a_client_that_vanishes_mid_byte_run_with_hashing_behind_leaves_nothing(
        board: Board, errors: list[dict[str, Any]]) -> None:
    client = Client(board)
    client.open()
    client.peer.callRemote(ps.Upload, path="blob.bin", size=len(DATA), sha256=DIGEST)
    client.peer.transport.write(DATA[:1000])
    board.flush()
    client.peer.transport.loseConnection()
    board.flush()
    hashing_done(board)  # the hashing thread answers after the session is gone
    assert left_behind(board) == []
    assert errors == []
    the_board_serves_again(board)
