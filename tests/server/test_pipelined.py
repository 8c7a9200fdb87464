"""Commands pipelined behind a download: each byte run follows the one before it, every
answer lands between runs (never inside one), and a connection may have only so many
downloads under way (each holds an open file) or boxes waiting behind a run it does not
read."""

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
from compassd.server.session import MAX_DOWNLOADS, MAX_HELD, SessionConnection
from tests.fuzz._inprocess import box
from tests.fuzz.test_server_input import Board

FILES = {f"f{i}": bytes([65 + i]) * (100_000 + i) for i in range(MAX_DOWNLOADS + 2)}


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Board]:
    monkeypatch.setattr(os, "chdir", lambda path: None)
    b = Board(tmp_path / "work")
    yield b
    if b.board.session is not None:  # its arena is in /dev/shm
        b.board.end_session(b.board.session, "closed", "The test ended.")


def opened(board: Board) -> tuple[SessionConnection, StringTransport]:
    """A connection with a session holding FILES; its transport never pulls on its own."""
    connection = SessionConnection(board.board)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5000))
    connection.makeConnection(transport)
    data = box(Hello, 1, versions=[PROTOCOL_VERSION], role="client")
    data += box(ps.OpenSession, 2, ticket=board.issue())
    connection.dataReceived(data)
    board.flush()
    for i, (name, content) in enumerate(FILES.items()):
        connection.dataReceived(box(ps.Upload, 10 + i, path=name, size=len(content),
                                    sha256=hashlib.sha256(content).hexdigest()) + content)
        board.flush()
    boxes = amp.parseString(transport.value())
    assert all(amp.ERROR not in b for b in boxes), boxes
    transport.clear()
    return connection, transport


def pull(transport: StringTransport, board: Board) -> None:
    """Let every byte run finish, as a transport that is read would."""
    for _ in range(10_000):
        producer: Any = transport.producer
        if producer is None:
            return
        producer.resumeProducing()
        board.flush()
    raise AssertionError("a byte run never ended")


def read_stream(data: bytes) -> list[tuple[amp.AmpBox, bytes]]:
    """Split what the board wrote into boxes, each with the raw bytes that follow it (an
    answer naming a size is followed by that many bytes)."""
    out = []
    while data:
        end = 0
        while True:  # key/value pairs up to the empty key
            length = int.from_bytes(data[end:end + 2], "big")
            end += 2
            if length == 0:
                break
            end += length
            end += 2 + int.from_bytes(data[end:end + 2], "big")
        (first,) = amp.parseString(data[:end])
        size = int(first[b"size"]) if amp.ANSWER in first and b"size" in first else 0
        out.append((first, data[end:end + size]))
        data = data[end + size:]
    return out


def test_pipelined_downloads_follow_one_another_and_answers_never_land_inside_a_run(
    board: Board,
) -> None:
    connection, transport = opened(board)
    names = list(FILES)[:MAX_DOWNLOADS]
    pipelined = b"".join(box(ps.Download, 100 + i, path=name) for i, name in enumerate(names))
    pipelined += box(ps.ListFiles, 200)
    connection.dataReceived(pipelined)
    board.flush()
    pull(transport, board)
    assert not transport.disconnecting
    got = read_stream(transport.value())
    assert [b[amp.ANSWER] for b, _ in got] == [
        str(100 + i).encode() for i in range(MAX_DOWNLOADS)] + [b"200"]
    for (answer, content), name in zip(got, names, strict=False):
        assert content == FILES[name]
        assert answer[b"sha256"].decode() == hashlib.sha256(FILES[name]).hexdigest()
    assert connection._downloads == 0


def test_downloads_past_the_cap_are_refused_with_a_sentence_and_the_rest_are_served(
    board: Board,
) -> None:
    connection, transport = opened(board)
    names = list(FILES)
    connection.dataReceived(b"".join(box(ps.Download, 100 + i, path=name)
                                     for i, name in enumerate(names)))
    board.flush()
    pull(transport, board)
    got = read_stream(transport.value())
    served = [b for b, _ in got if amp.ANSWER in b]
    refused = [b for b, _ in got if amp.ERROR in b]
    assert len(served) == MAX_DOWNLOADS and len(refused) == len(names) - MAX_DOWNLOADS
    assert all(b[b"_error_code"] == b"LIMIT_EXCEEDED" for b in refused)
    assert b"already under way on this connection" in refused[0][b"_error_description"]
    assert not transport.disconnecting
    connection.dataReceived(box(ps.Download, 300, path=names[-1]))  # room again
    board.flush()
    pull(transport, board)
    (answer, content), = read_stream(transport.value())[len(got):]
    assert content == FILES[names[-1]]


def test_a_client_that_pipelines_without_reading_is_closed_not_buffered(
    board: Board,
) -> None:
    connection, transport = opened(board)
    connection.dataReceived(box(ps.Download, 100, path="f0"))  # a run it never reads
    board.flush()
    for i in range(MAX_HELD + 10):
        connection.dataReceived(box(ps.ListFiles, 1000 + i))
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert len(connection._held) <= MAX_HELD + 1
