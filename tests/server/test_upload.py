"""Uploads are stored whole and checked, or leave nothing behind; downloads stay in step."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure

from compassd.protocol.errors import (
    BadRequest,
    ChecksumMismatch,
    InternalError,
    LimitExceeded,
    NoSuchFile,
    PathRefused,
)
from compassd.protocol.peer import CompassPeer
from compassd.server.sessiondir import SessionDirectory
from compassd.server.upload import UploadSink, download_chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def session(tmp_path):
    directory = SessionDirectory.create(tmp_path / "work", max_upload=1000, session="u")
    yield directory
    directory.destroy()


def leftovers(directory: SessionDirectory) -> list[str]:
    return os.listdir(directory.partial)


def test_upload_is_stored_at_its_path_when_size_and_checksum_match(session):
    data = b"model bytes" * 10
    sink = UploadSink.start(session, "models/m.onnx", len(data), sha(data).upper())
    sink(data[:7])
    sink(data[7:])
    stored = sink.finish()
    assert stored == session.files / "models" / "m.onnx"
    assert stored.read_bytes() == data
    assert leftovers(session) == []
    assert session.used() == len(data)


def test_an_empty_upload_stores_an_empty_file(session):
    sink = UploadSink.start(session, "empty", 0, sha(b""))
    assert sink.finish().read_bytes() == b""


def test_upload_replaces_an_existing_file(session):
    (session.files / "m").write_bytes(b"old")
    sink = UploadSink.start(session, "m", 3, sha(b"new"))
    sink(b"new")
    sink.finish()
    assert (session.files / "m").read_bytes() == b"new"
    assert leftovers(session) == []  # the old content is removed (in a thread on a board)
    assert session.used() == 3


def test_bytes_are_written_to_a_partial_file_until_finished(session):
    sink = UploadSink.start(session, "m", 4, sha(b"abcd"))
    sink(b"ab")
    assert not (session.files / "m").exists()
    assert len(leftovers(session)) == 1
    sink(b"cd")
    sink.finish()


def test_upload_over_the_quota_is_refused_before_anything_is_written(session):
    with pytest.raises(LimitExceeded, match="limit of 1000 bytes"):
        UploadSink.start(session, "big", 1001, sha(b""))
    assert leftovers(session) == []
    assert session.used() == 0


def test_quota_counts_uploads_under_way(session):
    first = UploadSink.start(session, "a", 600, "0" * 64)
    with pytest.raises(LimitExceeded, match="400 bytes are free"):
        UploadSink.start(session, "b", 401, "0" * 64)
    first.abort()
    UploadSink.start(session, "b", 1000, "0" * 64).abort()


@pytest.mark.parametrize(
    "path, size, digest, error",
    [
        ("../x", 1, "0" * 64, PathRefused),
        ("/etc/x", 1, "0" * 64, PathRefused),
        ("x", 1, "0" * 63, BadRequest),
        ("x", 1, "g" * 64, BadRequest),
        ("x", -1, "0" * 64, BadRequest),
    ],
)
def test_bad_announcements_are_refused_before_anything_is_written(
    session, path, size, digest, error
):
    with pytest.raises(error):
        UploadSink.start(session, path, size, digest)
    assert leftovers(session) == []
    assert session.used() == 0


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(session):
    first = UploadSink.start(session, "m", 3, sha(b"old"))  # counted: it went through
    first(b"old")
    first.finish()
    announced = sha(b"what was meant")
    sink = UploadSink.start(session, "m", 4, announced)
    sink(b"oops")
    with pytest.raises(ChecksumMismatch) as caught:
        sink.finish()
    assert announced in str(caught.value)
    assert sha(b"oops") in str(caught.value)
    assert "'m'" in str(caught.value)
    assert leftovers(session) == []
    assert (session.files / "m").read_bytes() == b"old"
    assert session.used() == 3


def test_abort_mid_transfer_leaves_nothing(session):
    data = b"x" * 100
    sink = UploadSink.start(session, "m", len(data), sha(data))
    sink(data[:40])
    sink.abort()
    sink(data[40:])  # late bytes after abort are ignored
    assert leftovers(session) == []
    assert not (session.files / "m").exists()
    assert session.used() == 0
    sink.abort()
    with pytest.raises(RuntimeError):
        sink.finish()


def test_a_short_or_long_upload_is_refused_and_leaves_nothing(session):
    short = UploadSink.start(session, "m", 4, sha(b"abcd"))
    short(b"abc")
    with pytest.raises(BadRequest, match="3 bytes, but 4"):
        short.finish()
    long = UploadSink.start(session, "m", 2, sha(b"ab"))
    long(b"abc")
    with pytest.raises(BadRequest, match="3 bytes, but 2"):
        long.finish()
    assert leftovers(session) == []
    assert not (session.files / "m").exists()


def test_a_write_error_is_kept_and_reported_at_finish_not_raised_to_the_connection(
    session,
):
    sink = UploadSink.start(session, "m", 2, sha(b"ab"))

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    sink._file.close()
    sink._file = FullDisk()
    sink(b"ab")  # does not raise
    with pytest.raises(LimitExceeded, match="ran out of disk space"):
        sink.finish()
    assert leftovers(session) == []

    other = UploadSink.start(session, "n", 1, sha(b"a"))
    other._file.close()
    other._error = OSError(errno.EIO, "I/O error")
    with pytest.raises(InternalError, match="could not write"):
        other.finish()


def test_upload_is_refused_onto_a_folder_and_leaves_nothing(session):
    (session.files / "folder").mkdir()
    sink = UploadSink.start(session, "folder", 1, sha(b"a"))
    sink(b"a")
    with pytest.raises(PathRefused, match="folder"):
        sink.finish()
    assert leftovers(session) == []
    assert (session.files / "folder").is_dir()


def splits(n: int):
    """Every way to cut n bytes into pieces at up to two places."""
    for cuts in itertools.chain(
        [()],
        itertools.combinations(range(1, n), 1),
        itertools.combinations(range(1, n), 2),
    ):
        yield [0, *cuts, n]


def test_every_chunk_split_stores_the_same_bytes(session):
    data = bytes(range(1, 10))
    tried = 0
    for bounds in splits(len(data)):
        sink = UploadSink.start(session, "m", len(data), sha(data))
        for start, end in itertools.pairwise(bounds):
            sink(data[start:end])
        assert sink.finish().read_bytes() == data
        tried += 1
    assert tried == 1 + 8 + 28
    assert leftovers(session) == []


def test_every_split_through_a_peer_raw_run_stores_the_file(session):
    """The sink fits CompassPeer.expect_raw: bytes arrive split anywhere, with the next
    box's bytes right behind them."""
    data = b"0123456789"
    trailer = amp.AmpBox(_command=b"no-such-command", _ask=b"1").serialize()
    wire = data + trailer
    for bounds in splits(len(wire)):
        peer = CompassPeer()
        peer.makeConnection(StringTransport())
        sink = UploadSink.start(session, "m", len(data), sha(data))
        done = peer.expect_raw(len(data), sink)
        stored = []
        done.addCallback(lambda _, sink=sink, stored=stored: stored.append(sink.finish()))
        for start, end in itertools.pairwise(bounds):
            peer.dataReceived(wire[start:end])
        assert stored == [session.files / "m"], bounds
        assert stored[0].read_bytes() == data
        assert b"UNHANDLED" in peer.transport.value()  # the box after was parsed
        peer.connectionLost(Failure(ConnectionLost()))
    assert leftovers(session) == []


def test_peer_vanishing_mid_upload_leaves_nothing(session):
    data = b"x" * 50
    peer = CompassPeer()
    peer.makeConnection(StringTransport())
    sink = UploadSink.start(session, "m", len(data), sha(data))
    done = peer.expect_raw(len(data), sink)
    failures = []
    done.addErrback(lambda f: (sink.abort(), failures.append(f)))
    peer.dataReceived(data[:20])
    assert len(leftovers(session)) == 1
    peer.connectionLost(Failure(ConnectionLost()))
    assert len(failures) == 1
    assert leftovers(session) == []
    assert not (session.files / "m").exists()
    assert session.used() == 0


# --- downloads ----------------------------------------------------------------------


def test_download_gives_size_checksum_and_exactly_the_bytes(session):
    data = bytes(range(256)) * 3
    (session.files / "out.bin").write_bytes(data)
    for chunk_size in (1, 7, 256, 768, 10_000):
        download = download_chunks(session, "out.bin", chunk_size)
        assert download.size == len(data)
        assert download.sha256 == sha(data)
        chunks = list(download)
        assert b"".join(chunks) == data
        assert all(len(chunk) <= chunk_size for chunk in chunks)


def test_download_of_an_empty_file_yields_nothing(session):
    (session.files / "e").write_bytes(b"")
    download = download_chunks(session, "e", 4)
    assert (download.size, download.sha256, list(download)) == (0, sha(b""), [])


def test_download_stays_in_step_when_the_file_shrinks_after_opening(session):
    (session.files / "f").write_bytes(b"abcdef")
    download = download_chunks(session, "f", 4)
    (session.files / "f").write_bytes(b"ab")  # truncates the same inode
    sent = b"".join(download)
    assert len(sent) == download.size == 6
    assert sha(sent) != download.sha256  # the client's check will catch it


def test_download_refuses_missing_files_links_and_escapes(tmp_path, session):
    with pytest.raises(NoSuchFile):
        download_chunks(session, "absent")
    (session.files / "real").write_bytes(b"r")
    os.symlink("real", session.files / "link")
    with pytest.raises(PathRefused):
        download_chunks(session, "link")
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(str(tmp_path / "secret"), session.files / "out")
    with pytest.raises(PathRefused):
        download_chunks(session, "out")
    with pytest.raises(PathRefused):
        download_chunks(session, "../../secret")


# --- hashing happens in a thread, never on the reactor thread ------------------------


def reactor_threads():
    from twisted.internet import reactor

    from compassd.hashing import threads_of

    return threads_of(reactor)


@pytest_twisted.inlineCallbacks
def test_finish_in_thread_refuses_a_mismatch_and_leaves_nothing(session):
    sink = UploadSink.start(session, "w.bin", 4, sha(b"abcd"), reactor_threads())
    sink(b"abce")
    with pytest.raises(ChecksumMismatch, match="nothing was stored"):
        yield sink.finish_in_thread()
    assert leftovers(session) == [] and session.used() == 0
    assert not (session.files / "w.bin").exists()


@pytest_twisted.inlineCallbacks
def test_an_upload_aborted_while_it_is_verified_leaves_nothing(session):
    sink = UploadSink.start(session, "w.bin", 4, sha(b"abcd"), reactor_threads())
    sink(b"abcd")
    verifying = sink.finish_in_thread()
    sink.abort()  # the peer went away while the thread hashed
    with pytest.raises(BadRequest, match="abandoned"):
        yield verifying
    assert leftovers(session) == [] and not (session.files / "w.bin").exists()
    assert session.used() == 0


# --- the digest after the bytes, hashing in a thread as they arrive -----------------


def test_a_digest_after_the_bytes_is_checked_however_the_pieces_fall(session):
    from compassd.protocol.session import DIGEST_SIZE

    data = os.urandom(300)
    run = data + hashlib.sha256(data).digest()
    for cut in (1, 7, 299, 300, 301, 320, 331):  # pieces across the boundary
        sink = UploadSink.start(session, f"m{cut}.bin", len(data), None)
        assert sink.expected == len(data) + DIGEST_SIZE
        sink(run[:cut])
        sink(run[cut:])
        stored = sink.finish()
        assert stored.read_bytes() == data and sink.sha256 == sha(data)
        session.remove(f"m{cut}.bin")  # counted off the quota
    assert leftovers(session) == []


def test_a_wrong_digest_after_the_bytes_stores_nothing(session):
    data = b"weights" * 20
    sink = UploadSink.start(session, "w.bin", len(data), None)
    sink(data + hashlib.sha256(b"other").digest())
    with pytest.raises(ChecksumMismatch, match="the digest sent after it"):
        sink.finish()
    assert leftovers(session) == [] and session.used() == 0
    assert not (session.files / "w.bin").exists()
    short = UploadSink.start(session, "s.bin", len(data), None)
    short(data + b"\0" * 10)  # the digest cut short
    with pytest.raises(BadRequest, match="brought"):
        short.finish()
    assert leftovers(session) == [] and session.used() == 0


class HandRunner:
    """A thread runner whose jobs run only when the test says."""

    def __init__(self):
        self.jobs = []

    def __call__(self, function, *args):
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.jobs.append((function, args, d))
        return d

    def run_all(self):
        while self.jobs:
            function, args, d = self.jobs.pop(0)
            d.callback(function(*args))


def test_bytes_are_hashed_through_the_runner_as_they_arrive_and_finish_waits_for_it(
        session):
    runner = HandRunner()
    data = os.urandom(900)
    sink = UploadSink.start(session, "w.bin", len(data), sha(data), runner)
    sink(data[:300])
    assert sink.backlog == 300 and len(runner.jobs) == 1  # handed over at once
    runner.run_all()
    sink(data[300:])
    assert sink.backlog == 600
    outcome = []
    sink.finish_in_thread().addBoth(outcome.append)
    assert outcome == []  # not before the last piece is hashed
    runner.run_all()
    assert outcome == [session.files / "w.bin"] and sink.backlog == 0
    assert outcome[0].read_bytes() == data


def test_an_upload_aborted_while_its_last_pieces_are_hashed_leaves_nothing(session):
    runner = HandRunner()
    sink = UploadSink.start(session, "w.bin", 4, sha(b"abcd"), runner)
    sink(b"abcd")
    outcome = []
    sink.finish_in_thread().addBoth(outcome.append)
    sink.abort()  # the peer went away while the thread hashed
    runner.run_all()
    assert isinstance(outcome[0], Failure) and outcome[0].check(BadRequest)
    assert "abandoned" in str(outcome[0].value)
    assert leftovers(session) == [] and not (session.files / "w.bin").exists()
    assert session.used() == 0


@pytest_twisted.inlineCallbacks
def test_open_download_hashes_in_a_thread_and_gives_what_download_chunks_gives(
        session):
    import threading

    from compassd.server.upload import open_download

    data = bytes(range(256)) * 3
    sink = UploadSink.start(session, "out.bin", len(data), sha(data))
    sink(data)
    sink.finish()
    threads: list[str] = []
    real = download_chunks

    def recording(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    import compassd.server.upload as upload

    original, upload.download_chunks = upload.download_chunks, recording
    try:
        download = yield open_download(session, "out.bin", 100)
    finally:
        upload.download_chunks = original
    assert download.sha256 == sha(data) and b"".join(download) == data
    assert threads and threading.main_thread().name not in threads


@pytest_twisted.inlineCallbacks
def test_on_a_real_reactor_an_upload_is_hashed_off_the_reactor_thread(session):
    import threading

    from twisted.internet import reactor

    from compassd.hashing import threads_of

    threads = []
    real = threads_of(reactor)

    def recording(function, *args):
        def job(*inner):
            threads.append(threading.current_thread().name)
            return function(*inner)

        return real(job, *args)

    data = os.urandom(200)
    sink = UploadSink.start(session, "w.bin", len(data), None, recording)
    sink(data + hashlib.sha256(data).digest())
    stored = yield sink.finish_in_thread().addTimeout(60, reactor)
    assert stored.read_bytes() == data
    assert threads and threading.main_thread().name not in threads
