"""Raw byte runs from the client to a board and back: files and tensors in chunks.

A large value travels as a raw byte run right after the box that announces it (see
L{compassd.protocol.session}). Going out, a L{RunSender} is a pull producer: it reads or
copies one chunk each time the transport asks for more, so TCP's flow control holds and
a file is never read into memory whole. Coming back, a L{Filler} writes the bytes
straight into the arrays they belong in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import IO, Any, Union

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from ..hashing import StreamHash
from . import _digests

CHUNK = 1 << 20
"""Bytes read from a file and written to the transport at a time while uploading."""

BUFFER_CHUNK = 4 << 20
"""Bytes of in-memory tensors copied and written at a time: a few SEND_LIMIT pieces per
pass through the reactor, in memory that is reused from one chunk to the next."""

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
"""What can be uploaded: a local file's path, or the bytes themselves."""

Progress = Callable[[int, int], object]
"""C{progress(done, total)}: bytes moved so far out of the total."""


HASH_BACKLOG = 16 << 20
"""Bytes of a streamed upload read and sent but not hashed yet, at most: past it the
sender waits for the hashing thread."""


def remembered(source: str | os.PathLike[str]) -> tuple[int, str] | None:
    """The size and SHA-256 of an unchanged local file hashed before (by this process or
    another; see L{compassd.client._digests}), from one C{stat}; None when not known."""
    key = _digests.file_key(source)
    known = _digests.lookup(key)
    return None if known is None else (key[1], known)


def digest(source: Source) -> tuple[int, str]:
    """The size and SHA-256 (hex) of a local file or of bytes, reading a file in chunks.

    A file's SHA-256 is remembered by its path, size, times and inode, so asking again
    about an unchanged file reads nothing."""
    sha = hashlib.sha256()
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        sha.update(view)
        return len(view), sha.hexdigest()
    key = _digests.file_key(source)
    known = _digests.lookup(key)
    if known is not None:
        return key[1], known
    size = 0
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    if _digests.file_key(source) == key and size == key[1]:  # unchanged while it was read
        _digests.remember(key, sha.hexdigest())
    return size, sha.hexdigest()


@implementer(IPullProducer)
class RunSender:
    """Writes exactly C{size} bytes of a file or of buffers to a transport, one chunk
    each time the transport asks for more (a pull producer, so TCP's flow control holds
    and nothing is read or copied whole).

    A file that shrank since it was hashed is padded with zeros so the connection stays
    in step; the board then refuses the upload with L{ChecksumMismatch}.

    With C{hashing} (a L{StreamHash}), a file's bytes are hashed as they go out (in the
    hashing thread) and the run ends with their 32-byte SHA-256
    (L{compassd.protocol.session.UploadDigestAfter}); L{sha256} is then its hex digest.
    A file found changed while it was sent (shorter than announced, or its size or
    modification time different at the end: L{changed}) ends with a digest that cannot
    match, so the board stores nothing.
    """

    def __init__(self, transport: Any, source: str | os.PathLike[str] | list[memoryview],
                 size: int, progress: Progress | None,
                 hashing: StreamHash | None = None) -> None:
        self.transport = transport
        self.size = size
        self.sent = 0
        self.progress = progress
        self.hashing = hashing
        self.sha256: str | None = None
        """With C{hashing}: the SHA-256 of the bytes sent, once the run is done."""
        self.changed = False
        """Whether the file changed while it was sent (then nothing is stored)."""
        self.done: Deferred[None] = Deferred()
        self._file: IO[bytes] | None = None
        self._before: tuple[int, int] | None = None
        self._views: list[memoryview] = []
        self._index = 0
        self._offset = 0
        self._stalled = False
        if isinstance(source, list):
            self._views = [v for v in source if len(v)]
        else:
            self._file = open(source, "rb")  # noqa: SIM115 - closed in _finish
            info = os.fstat(self._file.fileno())
            self._before = (info.st_size, info.st_mtime_ns)
            if hashing is not None and info.st_size != size:
                self.changed = True  # not the size announced: it changed since

    def start(self) -> Deferred[None]:
        if self.size == 0 and self.hashing is None:
            self._finish(None)
        elif self.size == 0:  # an empty file: only its digest follows the box
            self._stalled = True
            self.transport.registerProducer(self, False)
            self._all_sent()
        else:
            self.transport.registerProducer(self, False)
        return self.done

    def _take(self, want: int) -> bytes:
        if self._file is not None:
            return self._file.read(want)
        parts = []
        while want and self._index < len(self._views):
            view = self._views[self._index]
            take = min(len(view) - self._offset, want)
            parts.append(view[self._offset : self._offset + take])
            want -= take
            self._offset += take
            if self._offset == len(view):
                self._index += 1
                self._offset = 0
        return b"".join(parts)

    def resumeProducing(self) -> None:
        if self.done.called or self._stalled or self.sent >= self.size:
            return
        hashing = self.hashing
        if hashing is not None and hashing.backlog > HASH_BACKLOG:
            self._stalled = True  # the hashing thread is behind: wait for it
            hashing.below(HASH_BACKLOG // 2).addCallback(self._unstall)
            return
        want = min(CHUNK if self._file is not None else BUFFER_CHUNK, self.size - self.sent)
        chunk = self._take(want)
        if len(chunk) < want:
            self.changed = True
            chunk += bytes(want - len(chunk))
        self.sent += want
        if hashing is not None:
            hashing.update(chunk)
        self.transport.write(chunk)
        if self.progress is not None:
            self.progress(self.sent, self.size)
        if self.sent >= self.size:
            if hashing is None:
                self.transport.unregisterProducer()
                self._finish(None)
            else:
                self._stalled = True
                self._all_sent()

    def _unstall(self, _: object) -> None:
        self._stalled = False
        if not self.done.called:
            self.resumeProducing()

    def _all_sent(self) -> None:
        """The file's bytes are written: check it did not change, then end the run with
        the digest once the hashing thread has it."""
        assert self.hashing is not None
        if self._file is not None and self._before is not None:
            try:
                info = os.fstat(self._file.fileno())
                if (info.st_size, info.st_mtime_ns) != self._before:
                    self.changed = True
            except OSError:
                self.changed = True

        def hashed(value: bytes) -> None:
            if self.done.called:
                return
            if self.changed:
                value = bytes([value[0] ^ 0xFF]) + value[1:]
            else:
                self.sha256 = value.hex()
            self.transport.write(value)
            self.transport.unregisterProducer()
            self._finish(None)

        def failed(failure: Failure) -> None:
            if not self.done.called:  # the run cannot be finished: drop the connection
                self.transport.unregisterProducer()
                self.transport.abortConnection()
                self._finish(failure)

        self.hashing.digest().addCallbacks(hashed, failed)

    def stopProducing(self) -> None:
        self._finish(Failure(ConnectionClosed("the connection closed during a byte run")))

    def _finish(self, outcome: Failure | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.done.called:
            if outcome is None:
                self.done.callback(None)
            else:
                self.done.errback(outcome)


class Filler:
    """A raw-run sink that fills a list of byte views in order."""

    def __init__(self, views: list[memoryview]) -> None:
        self.views = [v for v in views if len(v)]
        self.index = 0
        self.offset = 0
        self.received = 0

    def write(self, data: bytes) -> None:
        source = memoryview(data)
        self.received += len(source)
        while len(source) and self.index < len(self.views):
            view = self.views[self.index]
            take = min(len(view) - self.offset, len(source))
            view[self.offset : self.offset + take] = source[:take]
            source = source[take:]
            self.offset += take
            if self.offset == len(view):
                self.index += 1
                self.offset = 0


def run_sender(transport: Any, source: Source | list[memoryview], size: int,
               progress: Progress | None, hashing: StreamHash | None = None
               ) -> RunSender | None:
    """The sender of a raw byte run of C{size} bytes, not started yet; or None when the
    run is in-memory buffers of at most L{CHUNK} bytes, which are then written to
    C{transport} at once."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = [memoryview(source).cast("B")]
    if isinstance(source, list) and size <= CHUNK and hashing is None:
        if size:
            transport.write(b"".join(source))
        if progress is not None:
            progress(size, size)
        return None
    return RunSender(transport, source, size, progress, hashing)
