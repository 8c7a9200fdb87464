"""The client's side of the board's model cache: it asks before sending only a board
that says it can answer, remembers the SHA-256 of an unchanged local file, and still
uploads as before to an older board."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from compassd.client import _digests, _transfer
from compassd.protocol import session as sp
from compassd.protocol.errors import ChecksumMismatch
from tests.client.test_session import (
    FakeBoard,
    PumpEndpoint,
    call,
    failure,
    open_session,
)


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


def test_an_unchanged_files_digest_is_remembered_and_a_rewritten_one_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"a" * 5000
    local = model_file(tmp_path, data)
    expected = hashlib.sha256(data).hexdigest()
    assert _transfer.digest(str(local)) == (5000, expected)

    def no_reading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the file was read again")

    # Unchanged: the remembered digest, without opening the file.
    with monkeypatch.context() as m:
        m.setattr(_transfer, "open", no_reading, raising=False)
        assert _transfer.digest(str(local)) == (5000, expected)
        assert _transfer.remembered(str(local)) == (5000, expected)
    # Other bytes of the same size, the modification time set back: the change time
    # (which no program can set back) moved, so it is read again.
    info = local.stat()
    local.write_bytes(b"b" * 5000)
    os.utime(local, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert _transfer.remembered(str(local)) is None
    assert _transfer.digest(str(local)) == (5000, hashlib.sha256(b"b" * 5000).hexdigest())
    # Another file at another path with the same bytes is its own entry.
    other = tmp_path / "copy.bin"
    other.write_bytes(data)
    assert _transfer.remembered(str(other)) is None
    assert _transfer.digest(str(other)) == (5000, expected)


def test_digests_outlive_the_process_in_the_users_file_and_a_bad_line_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "cache" / "digests"
    monkeypatch.setenv("COMPASS_DIGESTS", str(store))
    _digests.forget_all()
    local = model_file(tmp_path, b"weights" * 100)
    size, sha = _transfer.digest(str(local))
    assert store.stat().st_mode & 0o777 == 0o600
    with open(store, "a") as f:
        f.write("not a line\n" + "f" * 64 + " x 1 2 3 4 /nowhere\n")
    _digests.forget_all()  # as a new process would start
    assert _transfer.remembered(str(local)) == (size, sha)
    monkeypatch.setenv("COMPASS_DIGESTS", "")  # none: this process's memory only
    _digests.forget_all()
    assert _transfer.remembered(str(local)) is None


def test_the_digest_file_is_rewritten_with_the_newest_entries_when_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "digests"
    monkeypatch.setenv("COMPASS_DIGESTS", str(store))
    monkeypatch.setattr(_digests, "LIMIT", 3)
    _digests.forget_all()
    files = []
    for i in range(8):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * 10)
        files.append(path)
        _transfer.digest(str(path))
    lines = store.read_text().splitlines()
    assert len(lines) <= 6  # rewritten at twice the limit, never longer
    _digests.forget_all()
    assert _transfer.remembered(str(files[-1])) is not None
    assert _transfer.remembered(str(files[0])) is None


# --- the digest after the bytes (upload-digest-after) --------------------------------


class StreamingBoard(CachingBoard):
    """A caching board that also takes the digest after the bytes."""

    @sp.OpenSession.responder
    def open_session(self, ticket: str, device: str | None = None) -> dict[str, Any]:
        answer = super().open_session(ticket, device)
        return {**answer, "features": [sp.FEATURE_CACHE, sp.FEATURE_DIGEST_AFTER]}

    @sp.UploadDigestAfter.responder
    def upload_digest_after(self, path: str, size: int) -> Any:
        self.seen.append("upload-digest-after")
        buf = bytearray()

        def check(_: object) -> dict[str, Any]:
            data, trailer = bytes(buf[:size]), bytes(buf[size:])
            assert len(trailer) == sp.DIGEST_SIZE
            if hashlib.sha256(data).digest() != trailer:
                raise ChecksumMismatch(f"The bytes of {path!r} do not match their SHA-256.")
            self.files[path] = data
            self.store[trailer.hex()] = data
            return {}

        return self.expect_raw(size + sp.DIGEST_SIZE, buf.extend).addCallback(check)


def streaming_session(store: dict[str, bytes]) -> tuple[Any, PumpEndpoint]:
    ep = PumpEndpoint()
    ep.board = StreamingBoard(store)
    return open_session(ep)


def test_a_new_file_is_hashed_while_it_is_sent_and_then_comes_from_the_cache(
    tmp_path: Path
) -> None:
    store: dict[str, bytes] = {}
    data = os.urandom(2_500_000)  # more than one chunk
    local = model_file(tmp_path, data)
    first, ep1 = streaming_session(store)
    progress: list[tuple[int, int]] = []
    assert call(ep1, first.upload(str(local), progress=lambda *a: progress.append(a))) \
        == "m.bin"
    # never read whole first: no use-cached (the digest was not known), one streamed run
    assert ep1.board.seen == ["open-session", "upload-digest-after"]
    assert ep1.board.files["m.bin"] == data
    assert progress[-1] == (len(data), len(data)) and len(progress) >= 2
    # the digest computed while sending is remembered: next time the cache is asked
    assert _transfer.remembered(str(local)) == (len(data), hashlib.sha256(data).hexdigest())
    second, ep2 = streaming_session(store)
    call(ep2, second.upload(str(local)))
    assert ep2.board.seen == ["open-session", "use-cached"]
    assert second.cached == {"m.bin"}


def test_an_empty_file_streams_its_digest_alone(tmp_path: Path) -> None:
    local = model_file(tmp_path, b"")
    session, ep = streaming_session({})
    call(ep, session.upload(str(local)))
    assert ep.board.seen == ["open-session", "upload-digest-after"]
    assert ep.board.files["m.bin"] == b""


def test_a_file_that_changes_while_it_is_sent_is_refused_and_not_remembered(
    tmp_path: Path
) -> None:
    data = os.urandom(2_500_000)
    local = model_file(tmp_path, data)
    session, ep = streaming_session({})

    def meddle(done: int, total: int) -> None:
        if done < total:
            with open(local, "r+b") as f:  # same size, other bytes, a new mtime
                f.seek(len(data) - 10)
                f.write(b"0123456789")
            os.utime(local, ns=(1, done))

    d = session.upload(str(local), progress=meddle)
    ep.flush()
    error = failure(d)
    assert error.check(ChecksumMismatch)
    assert "changed while it was sent" in str(error.value)
    assert "m.bin" not in ep.board.files
    assert _transfer.remembered(str(local)) is None
    call(ep, session.upload(str(local)))  # the session goes on; sent whole again
    assert ep.board.files["m.bin"] == local.read_bytes()


def test_an_older_board_gets_the_file_hashed_first(tmp_path: Path) -> None:
    local = model_file(tmp_path, os.urandom(10_000))
    session, ep = caching_session({})  # a cache but no upload-digest-after
    assert sp.FEATURE_DIGEST_AFTER not in session.features
    call(ep, session.upload(str(local)))
    assert ep.board.seen == ["open-session", "use-cached", "upload"]
    assert ep.board.files["m.bin"] == local.read_bytes()
