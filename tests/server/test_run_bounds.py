"""The raw bytes a command announces are checked against what the caller may send before
any is read: with no session open nothing may follow a box, and in a session no more
than its upload quota or half its arena. Past that, and when a command that announces
bytes has arguments that cannot be read, the board answers and closes the connection:
the bytes after the box are never parsed as boxes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from twisted.protocols import amp

from compassd.protocol import session as ps
from tests.fuzz._inprocess import answers, box
from tests.fuzz.test_server_input import MAX_UPLOAD, Board, Legit, feed, hello


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Board:
    monkeypatch.setattr(os, "chdir", lambda path: None)
    return Board(tmp_path / "work")


def upload_box(ask: int, path: bytes, size: int) -> bytes:
    return amp.AmpBox(_command=b"upload", _ask=b"%d" % ask, path=path, size=b"%d" % size,
                      sha256=b"0" * 64).serialize()


def opened(board: Board) -> bytes:
    return hello() + box(ps.OpenSession, 2, ticket=board.issue())


def test_an_upload_before_a_session_is_refused_and_its_bytes_are_not_read(
    board: Board
) -> None:
    legit = Legit(board)
    legit.open()
    hidden = box(ps.RemoveFile, 9, path="m")  # would remove nothing here, but is a box
    _, transport = feed(board, hello() + upload_box(5, b"m", 1 << 40) + hidden, 1 << 16)
    assert transport.disconnecting
    replies = answers(transport.value())
    assert b"5" in replies and b"9" not in replies
    legit.run()


def test_an_upload_with_a_path_that_is_not_utf8_closes_and_its_body_is_not_parsed(
    board: Board
) -> None:
    payload = box(ps.RemoveFile, 9, path="m")
    data = opened(board) + upload_box(5, b"\xff\xfe", len(payload)) + payload
    connection, transport = feed(board, data, len(data))
    replies = answers(transport.value())
    assert replies[b"5"][amp.ERROR_CODE] == b"BAD_REQUEST"
    assert b"9" not in replies, "the upload's body was parsed as a remove-file box"
    assert transport.disconnecting
    assert connection.session is not None
    assert not (connection.session.directory.files / "m").exists()


def test_an_upload_past_the_quota_is_refused_unread_and_one_within_it_is_read(
    board: Board
) -> None:
    data = opened(board)
    connection, transport = feed(board, data, len(data))
    assert connection.session is not None
    # within the quota but with a wrong checksum: read, refused, the session serves on
    body = b"z" * 1000
    feed(board, upload_box(5, b"f", len(body)) + body, 4096, connection, transport)
    assert answers(transport.value())[b"5"][amp.ERROR_CODE] != b""
    assert not transport.disconnecting
    good = box(ps.Upload, 6, path="g", size=3, sha256=hashlib.sha256(b"abc").hexdigest())
    feed(board, good + b"abc", 4096, connection, transport)
    assert amp.ERROR not in answers(transport.value())[b"6"]
    # past the quota: refused at once, and nothing after it is read
    feed(board, upload_box(7, b"h", MAX_UPLOAD + 1) + box(ps.RemoveFile, 8, path="g"),
         4096, connection, transport)
    replies = answers(transport.value())
    assert replies[b"7"][amp.ERROR_CODE] == b"LIMIT_EXCEEDED", replies[b"7"]
    assert b"8" not in replies
    assert transport.disconnecting
    assert (connection.session.directory.files / "g").exists()


def test_run_inputs_past_half_the_arena_are_refused_unread(board: Board) -> None:
    data = opened(board)
    connection, transport = feed(board, data, len(data))
    size = (1 << 20)  # the whole arena
    run = box(ps.Run, 5, model="m", inputs=[{"name": "x", "dtype": "int8", "shape": [size],
                                             "nbytes": size}])
    feed(board, run + struct.pack("!H", 4) + b"junk", 4096, connection, transport)
    replies = answers(transport.value())
    assert replies[b"5"][amp.ERROR_CODE] == b"LIMIT_EXCEEDED"
    assert transport.disconnecting


def test_an_upload_with_its_digest_after_is_bounded_by_the_quota_too(board: Board) -> None:
    data = opened(board)
    connection, transport = feed(board, data, len(data))
    # within the quota, a digest that does not match: read, refused, the session serves on
    body = b"z" * 1000
    after = box(ps.UploadDigestAfter, 5, path="f", size=len(body))
    feed(board, after + body + hashlib.sha256(b"other").digest(), 4096, connection,
         transport)
    assert answers(transport.value())[b"5"][amp.ERROR_CODE] == b"CHECKSUM_MISMATCH"
    assert not transport.disconnecting
    good = box(ps.UploadDigestAfter, 6, path="g", size=3)
    feed(board, good + b"abc" + hashlib.sha256(b"abc").digest(), 4096, connection, transport)
    assert amp.ERROR not in answers(transport.value())[b"6"]
    assert (connection.session.directory.files / "g").read_bytes() == b"abc"
    # past the quota: refused at once, and nothing after it is read
    past = box(ps.UploadDigestAfter, 7, path="h", size=MAX_UPLOAD + 1)
    feed(board, past + box(ps.RemoveFile, 8, path="g"), 4096, connection, transport)
    replies = answers(transport.value())
    assert replies[b"7"][amp.ERROR_CODE] == b"LIMIT_EXCEEDED", replies[b"7"]
    assert b"8" not in replies and transport.disconnecting


def test_a_run_like_the_one_before_reuses_its_input_plan_and_a_bad_one_is_refused_each_time(
    board: Board
) -> None:
    from compassd.protocol.errors import TensorMismatch
    from tests.fuzz.test_server_input import Legit

    legit = Legit(board)
    legit.open()
    legit.run()
    legit.run()
    connection = legit.connection
    session = connection.session
    assert session is not None
    rows = [{"name": "x", "dtype": "int8", "shape": [4], "nbytes": 4}]
    plan = connection._inputs_to_arena(session, rows)
    assert connection._inputs_to_arena(session, [dict(row) for row in rows]) is plan
    assert len(connection._plans) == 1  # both runs and the calls above: one plan
    other = connection._inputs_to_arena(session, [dict(rows[0], shape=[2, 2])])
    assert other is not plan and other[0][0]["shape"] == [2, 2]
    wrong = [dict(rows[0], nbytes=5)]
    for _ in range(2):  # never kept: refused every time
        with pytest.raises(TensorMismatch, match="takes 4 bytes, but 5 were announced"):
            connection._inputs_to_arena(session, wrong)
    legit.run()
    legit.close()
