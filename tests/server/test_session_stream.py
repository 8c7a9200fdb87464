"""How the board writes large outputs: arena slices in chunks, through a producer, with
boxes held back until the byte run is whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.testing import StringTransport

from compassd.executor.arena import Arena, Slot
from compassd.server import session as server_session
from compassd.server.session import SessionConnection, _arena_chunks


def test_arena_chunks_give_each_slot_whole_in_bounded_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_session, "OUTPUT_CHUNK", 100)
    with Arena.create(tmp_path / "arena", 4096) as arena:
        view = arena.view()
        view[:] = bytes(i % 251 for i in range(4096))
        view.release()
        slots = [Slot("a", "uint8", (250,), 64, 250), Slot("b", "uint8", (30,), 1024, 30)]
        pieces = list(_arena_chunks(arena, slots))
        assert [len(p) for p in pieces] == [100, 100, 50, 30]
        assert b"".join(pieces) == arena.read_bytes(64, 250) + arena.read_bytes(1024, 30)


def test_a_box_waits_until_the_byte_run_being_streamed_is_whole() -> None:
    connection = SessionConnection(board=cast(Any, None))  # no board is needed here
    transport = StringTransport()
    connection.makeConnection(transport)
    connection._stream(iter([b"ab", b"cd"]))
    said: list[str] = []
    connection._between_runs(lambda: said.append("notice"))
    assert said == []
    for _ in range(3):  # two chunks, then the end of the run
        assert transport.producer is not None
        transport.producer.resumeProducing()
    assert transport.value() == b"abcd"
    assert transport.producer is None
    assert said == ["notice"]
    connection._between_runs(lambda: said.append("now"))
    assert said == ["notice", "now"]
