"""The client's side of the board's model cache: it asks before sending only a board
that says it can answer, remembers the SHA-256 of an unchanged local file, and still
uploads as before to an older board."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from compassd.client import _transfer
from compassd.protocol import session as sp
from tests.client.test_session import FakeBoard, PumpEndpoint, call, open_session


class CachingBoard(FakeBoard):
    """A board with a model cache shared by its sessions (C{store}: SHA-256 -> bytes)."""

    def __init__(self, store: dict[str, bytes]) -> None:
        super().__init__()
        self.store = store

    @sp.OpenSession.responder
    def open_session(self, ticket: str, device: str | None = None) -> dict[str, Any]:
        answer = super().open_session(ticket, device)
        return {**answer, "features": ["something-newer", sp.FEATURE_CACHE]}

    @sp.Upload.responder
    def upload(self, path: str, size: int, sha256: str) -> Any:
        def keep(answer: dict[str, Any]) -> dict[str, Any]:
            self.store[sha256] = self.files[path]
            return answer

        return super().upload(path, size, sha256).addCallback(keep)

    @sp.UseCached.responder
    def use_cached(self, path: str, size: int, sha256: str) -> dict[str, Any]:
        self.seen.append("use-cached")
        data = self.store.get(sha256)
        if data is None or len(data) != size:
            return {"stored": False}
        self.files[path] = data
        return {"stored": True}


def caching_session(store: dict[str, bytes]) -> tuple[Any, PumpEndpoint]:
    ep = PumpEndpoint()
    ep.board = CachingBoard(store)
    return open_session(ep)


def model_file(tmp_path: Path, data: bytes = b"weights" * 1000) -> Path:
    path = tmp_path / "m.bin"
    path.write_bytes(data)
    return path


def test_a_second_session_gets_the_same_file_from_the_cache_without_sending_it(
    tmp_path: Path
) -> None:
    store: dict[str, bytes] = {}
    local = model_file(tmp_path)
    first, ep1 = caching_session(store)
    assert sp.FEATURE_CACHE in first.features
    assert call(ep1, first.upload(str(local))) == "m.bin"
    assert ep1.board.seen == ["open-session", "use-cached", "upload"]
    assert first.cached == set()
    second, ep2 = caching_session(store)
    progress: list[tuple[int, int]] = []
    assert call(ep2, second.upload(str(local), progress=lambda *a: progress.append(a))) \
        == "m.bin"
    assert ep2.board.seen == ["open-session", "use-cached"]  # no upload: nothing sent
    assert ep2.board.files["m.bin"] == local.read_bytes()
    assert second.cached == {"m.bin"}
    assert progress == [(local.stat().st_size,) * 2]


def test_a_changed_file_is_hashed_again_and_sent(tmp_path: Path) -> None:
    store: dict[str, bytes] = {}
    local = model_file(tmp_path)
    first, ep1 = caching_session(store)
    call(ep1, first.upload(str(local)))
    local.write_bytes(b"new weights" * 1000)
    second, ep2 = caching_session(store)
    call(ep2, second.upload(str(local)))
    assert ep2.board.seen == ["open-session", "use-cached", "upload"]
    assert ep2.board.files["m.bin"] == b"new weights" * 1000
    assert second.cached == set()


def test_a_new_client_uploads_to_an_older_board_as_before(tmp_path: Path) -> None:
    local = model_file(tmp_path)
    session, ep = open_session()  # FakeBoard: an OpenSession answer without features
    assert session.features == frozenset()
    call(ep, session.upload(str(local)))
    call(ep, session.upload(str(local)))
    assert ep.board.seen == ["open-session", "upload", "upload"]  # never use-cached
    assert ep.board.files["m.bin"] == local.read_bytes() and session.cached == set()


def test_an_unchanged_files_digest_is_remembered_and_a_touched_one_read_again(
    tmp_path: Path
) -> None:
    data = b"a" * 5000
    local = model_file(tmp_path, data)
    expected = hashlib.sha256(data).hexdigest()
    assert _transfer.digest(str(local)) == (5000, expected)
    # Same size and modification time: the remembered digest, without reading the file
    # (which now holds other bytes, so a read would give another digest).
    info = local.stat()
    local.write_bytes(b"b" * 5000)
    os.utime(local, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert _transfer.digest(str(local)) == (5000, expected)
    os.utime(local, ns=(info.st_atime_ns, info.st_mtime_ns + 1000))
    assert _transfer.digest(str(local)) == (5000, hashlib.sha256(b"b" * 5000).hexdigest())
    # Another file at another path with the same bytes is its own entry.
    other = tmp_path / "copy.bin"
    other.write_bytes(data)
    assert _transfer.digest(str(other)) == (5000, expected)
