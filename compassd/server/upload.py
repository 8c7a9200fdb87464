"""Files streamed into a session directory, and out of it again.

An upload (L{compassd.protocol.session.Upload}) announces a path, a size and a SHA-256,
then its bytes follow raw on the connection. L{UploadSink} is what the server hands to
L{compassd.protocol.peer.CompassPeer.expect_raw} for them::

    sink = UploadSink.start(directory, path, size, sha256, in_thread)  # may refuse
    done = peer.expect_raw(sink.expected, sink)             # sink(bytes) per piece
    done.addCallbacks(lambda _: sink.finish_in_thread(), lambda f: (sink.abort(), f)[1])

Promises, each checked by the tests:

- an upload over the session's quota, with a malformed SHA-256 or to a refused path is
  refused by L{UploadSink.start}, before a byte is written; the server must still read
  the C{size} bytes that follow the box (into a sink that drops them, e.g. C{lambda
  data: None}) so the connection stays in step;
- the bytes go to a file in the session's C{partial/} folder and are hashed as they
  arrive, in the board's thread runner (L{compassd.hashing.StreamHash}: never on the
  reactor thread, and overlapped with the transfer, so the answer waits only for the
  last piece to be hashed); calling the sink never raises (an exception there would
  drop the connection), a write error is kept and reported by L{UploadSink.finish};
- with the digest after the bytes (C{sha256} None), the raw run is the C{size} bytes
  and then L{DIGEST_SIZE} bytes of digest (L{UploadSink.expected} in all);
- L{UploadSink.finish} stores the file at its path in one atomic rename only when the
  byte count and SHA-256 match; otherwise, and after L{UploadSink.abort} (the peer
  vanished mid-transfer), nothing of the upload is left: no partial file, no reserved
  quota, and any file already at the path is untouched;
- once the session directory is destroyed (the session ended: its lease expired, it was
  revoked, its client went away), the sink writes nothing more, and L{UploadSink.finish}
  or L{UploadSink.finish_in_thread} (even one already waiting for its hashing thread)
  fails with L{SessionEnded} having stored nothing, never with an error about the
  vanished directory.

L{download_chunks} is the other direction (L{compassd.protocol.session.Download}): it
opens the file once, answers its size and SHA-256, then yields exactly that many bytes;
L{open_download} does the opening and hashing in a thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from ..hashing import InThread, StreamHash
from ..protocol.errors import (
    BadRequest,
    ChecksumMismatch,
    InternalError,
    LimitExceeded,
    SessionEnded,
)
from ..protocol.session import DIGEST_SIZE
from .sessiondir import SessionDirectory, remove_quietly

DEFAULT_CHUNK = 256 * 1024
"""Bytes per chunk L{download_chunks} yields unless told otherwise."""

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def check_sha256(what: str, value: str) -> str:
    """Return C{value} in lower case if it is a hex SHA-256 digest, else L{BadRequest}."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise BadRequest(
            f"The SHA-256 of {what} should be 64 hexadecimal digits, not {value!r}."
        )
    return value.lower()


@attrs.define(eq=False)
class UploadSink:
    """The receiving end of one announced upload. Make one with L{UploadSink.start}."""

    directory: SessionDirectory
    relpath: str
    size: int
    sha256: str | None
    """The SHA-256 announced before the bytes; None when it follows them
    (L{compassd.protocol.session.UploadDigestAfter}) until the upload is stored."""
    _partial: Path
    _file: BinaryIO
    _token: object
    _hashing: StreamHash
    _trailer: bytearray | None = None
    """The digest that follows the bytes, as it arrives (None: announced before them)."""
    received: int = 0
    """Bytes that have arrived so far (including any beyond C{size})."""
    _error: OSError | None = None
    _state: str = "receiving"
    _in_thread: InThread = maybeDeferred
    """Where slow file system work goes: the hashing, and removing a file the upload
    replaced."""

    @classmethod
    def start(
        cls, directory: SessionDirectory, relpath: str, size: int, sha256: str | None,
        in_thread: InThread = maybeDeferred,
    ) -> UploadSink:
        """Check the announcement and get ready for its bytes, or refuse it with
        L{PathRefused}, L{BadRequest} or L{LimitExceeded} having written nothing.
        C{sha256} None: the digest follows the bytes. The bytes are hashed as they
        arrive through C{in_thread} (a server passes its thread runner; the default
        hashes at once, on the calling thread)."""
        what = directory.describe(relpath)
        digest = None if sha256 is None else check_sha256(what, sha256)
        if not isinstance(size, int) or size < 0:
            raise BadRequest(f"The size of {what} must be zero or more bytes, not {size!r}.")
        directory.resolve(relpath)
        token = object()
        directory.reserve(token, size, relpath)
        try:
            partial, file = directory.new_partial()
        except BaseException:
            directory.release(token)
            raise
        return cls(directory, relpath, size, digest, partial, file, token,
                   StreamHash(in_thread), None if digest is not None else bytearray(),
                   in_thread=in_thread)

    @property
    def expected(self) -> int:
        """Bytes of the raw run: the file's, and the digest's when it follows them."""
        return self.size + (0 if self._trailer is None else DIGEST_SIZE)

    @property
    def backlog(self) -> int:
        """Bytes that arrived and are not hashed yet."""
        return self._hashing.backlog

    def below(self, limit: int) -> Deferred[None]:
        """Fires once at most C{limit} bytes wait to be hashed."""
        return self._hashing.below(limit)

    def __call__(self, data: bytes) -> None:
        """Take the next piece of the upload (what C{expect_raw} calls). Never raises."""
        if self._state != "receiving":
            return
        if self.directory.destroyed:  # the session ended: write nothing more
            self._discard("ended")
            return
        at = self.received
        self.received += len(data)
        if self._error is not None:
            return
        if self.received > self.size:
            cut = max(0, self.size - at)
            if self._trailer is not None:
                self._trailer += data[cut:cut + DIGEST_SIZE - len(self._trailer)]
            data = data[:cut]
            if not data:
                return
        self._hashing.update(data)
        try:
            self._file.write(data)
        except OSError as e:
            self._error = e

    def finish(self) -> Path:
        """All bytes are in: store the file and return its path, or remove what arrived
        and raise L{ChecksumMismatch}, L{BadRequest} (wrong byte count) or
        L{LimitExceeded} / L{InternalError} (the board could not write it).

        Only for a sink that hashes at once (the default C{in_thread}); a server calls
        L{finish_in_thread}."""
        self._all_in()
        outcome: list[bytes | Failure] = []
        self._hashing.digest().addBoth(outcome.append)
        if not outcome:
            self._discard("refused")
            raise RuntimeError("UploadSink.finish needs a sink that hashes at once.")
        if isinstance(outcome[0], Failure):
            self._discard("refused")
            outcome[0].raiseException()
        assert isinstance(outcome[0], bytes)
        return self._store(outcome[0].hex())

    def finish_in_thread(self) -> Deferred[Path]:
        """L{finish}, once the hashing thread has hashed every byte that arrived (it
        hashed them as they came, so this waits only for the last of them): fires with
        the stored file's path, or fails with the same errors, having removed what
        arrived."""
        try:
            self._all_in()
        except Exception:
            return fail()
        self._state = "verifying"

        def hashed(actual: bytes) -> Path:
            if self._state != "verifying" or self.directory.destroyed:
                raise self._gave_up()
            self._state = "receiving"
            return self._store(actual.hex())

        def failed(failure: Failure) -> Failure:
            if self._state != "verifying" or self.directory.destroyed:
                return Failure(self._gave_up())
            self._discard("refused")
            return Failure(InternalError(
                f"The board could not hash {self.directory.describe(self.relpath)}"
                f" ({failure.getErrorMessage()}); nothing was stored."))

        return self._hashing.digest().addCallbacks(hashed, failed)

    def _gave_up(self) -> Exception:
        """Discard the upload, which was aborted or whose session ended meanwhile, and
        return the error that says so."""
        if self.directory.destroyed or self._state == "ended":
            self._discard("ended")
            return SessionEnded(
                f"The session ended while {self.directory.describe(self.relpath)} was"
                " uploaded; nothing was stored.")
        if self._state == "verifying":
            self._discard("aborted")
        return BadRequest(f"The upload of {self.relpath!r} was abandoned.")

    def _all_in(self) -> None:
        """Close the partial file and check that every announced byte was written; on
        failure, discard the upload and raise."""
        if self.directory.destroyed or self._state == "ended":
            raise self._gave_up()
        if self._state != "receiving":
            raise RuntimeError(f"The upload of {self.relpath!r} is already {self._state}.")
        what = self.directory.describe(self.relpath)
        try:
            try:
                self._file.close()
            except OSError as e:
                self._error = self._error or e
            if self._error is not None:
                raise _write_failed(what, self._error)
            if self.received != self.expected:
                raise BadRequest(
                    f"The upload of {what} brought {self.received} bytes, but"
                    f" {self.expected} were announced; nothing was stored. Send it again."
                )
        except BaseException:
            self._discard("refused")
            raise

    def _store(self, actual: str) -> Path:
        what = self.directory.describe(self.relpath)
        try:
            if self._trailer is None:
                if actual != self.sha256:
                    raise ChecksumMismatch(
                        f"The upload of {what} arrived with SHA-256 {actual}, but"
                        f" {self.sha256} was announced; nothing was stored. Send it again,"
                        " and check that the file did not change while it was sent."
                    )
            elif actual != bytes(self._trailer).hex():
                raise ChecksumMismatch(
                    f"The upload of {what} arrived with SHA-256 {actual}, but the digest"
                    f" sent after it was {bytes(self._trailer).hex()}; nothing was stored."
                    " Send it again, and check that the file did not change while it was"
                    " sent."
                )
            path = self.directory.commit(self._partial, self.relpath, self._remove_later)
        except BaseException:
            self._discard("refused")
            raise
        self.sha256 = actual
        self._state = "stored"
        self.directory.release(self._token)
        return path

    def _remove_later(self, path: Path) -> None:
        """Remove the content of a file this upload replaced, in a thread: freeing a
        large file's blocks takes a file system like ext4 tens of milliseconds, which
        neither the reactor nor the answer should wait for."""
        self._in_thread(remove_quietly, path)

    def abort(self) -> None:
        """Give up on the upload (the peer vanished): remove what arrived. Safe to call
        at any time, more than once, and after L{finish}."""
        if self._state in ("receiving", "verifying"):
            self._discard("aborted")

    def _discard(self, state: str) -> None:
        self._state = state
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self._partial)
        except FileNotFoundError:
            pass
        self.directory.release(self._token)


def _write_failed(what: str, error: OSError) -> Exception:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return LimitExceeded(
            f"The board ran out of disk space while storing {what}; nothing was stored."
            " Remove files from the session or send a smaller file."
        )
    return InternalError(
        f"The board could not write {what} ({error.strerror or error}); nothing was stored."
    )


@attrs.define(eq=False)
class FileDownload:
    """A file opened for L{compassd.protocol.session.Download}: its C{size} and C{sha256}
    go in the answer, then iterating gives exactly C{size} bytes in chunks.

    Should the file change after it was opened, a shrunk file is padded with zero bytes
    and a grown one cut at C{size}, so the connection stays in step; the client then
    sees a checksum mismatch rather than a stream out of step.
    """

    size: int
    sha256: str
    chunk_size: int
    _file: BinaryIO

    def __iter__(self) -> Iterator[bytes]:
        try:
            self._file.seek(0)
            left = self.size
            while left:
                chunk = self._file.read(min(self.chunk_size, left))
                if not chunk:
                    chunk = bytes(min(self.chunk_size, left))
                left -= len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Close the file (iterating to the end does it too)."""
        self._file.close()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file, read in chunks (call it in a thread for big files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def open_download(directory: SessionDirectory, relpath: str,
                  chunk_size: int = DEFAULT_CHUNK,
                  in_thread: InThread = deferToThread) -> Deferred[FileDownload]:
    """L{download_chunks} in a thread: hashing a 4 GiB file takes seconds, which the
    reactor thread (heartbeats, other connections) must not wait for."""
    return in_thread(download_chunks, directory, relpath, chunk_size)


def download_chunks(
    directory: SessionDirectory, relpath: str, chunk_size: int = DEFAULT_CHUNK
) -> FileDownload:
    """Open the file C{relpath} of a session for download and hash it: raises
    L{PathRefused} or L{NoSuchFile} as L{SessionDirectory.open_for_read} does.

    Hashing reads the whole file, so for large files call this outside the reactor
    thread (C{deferToThread}).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size!r}.")
    file = directory.open_for_read(relpath)
    try:
        size = os.fstat(file.fileno()).st_size
        digest = hashlib.sha256()
        left = size
        while left:
            block = file.read(min(DEFAULT_CHUNK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
        if left:
            digest.update(bytes(left))
    except BaseException:
        file.close()
        raise
    return FileDownload(size=size, sha256=digest.hexdigest(), chunk_size=chunk_size, file=file)
