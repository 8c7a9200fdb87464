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
import threading
from collections.abc import Callable
from typing import IO, Any, Union

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

CHUNK = 256 * 1024
"""Bytes read from a file and written to the transport at a time while uploading."""

BUFFER_CHUNK = 4 << 20
"""Bytes of in-memory tensors copied and written at a time: a few SEND_LIMIT pieces per
pass through the reactor, in memory that is reused from one chunk to the next."""

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
"""What can be uploaded: a local file's path, or the bytes themselves."""

Progress = Callable[[int, int], object]
"""C{progress(done, total)}: bytes moved so far out of the total."""


_KNOWN_LIMIT = 4096
"""Local files whose SHA-256 this process remembers (the oldest are forgotten first)."""

_known: dict[tuple[str, int, int, int, int], str] = {}
"""(real path, size, mtime_ns, device, inode) -> SHA-256 of local files already hashed."""
_known_lock = threading.Lock()


def _file_key(source: str | os.PathLike[str]) -> tuple[str, int, int, int, int]:
    info = os.stat(source)
    return (os.path.realpath(source), info.st_size, info.st_mtime_ns, info.st_dev,
            info.st_ino)


def digest(source: Source) -> tuple[int, str]:
    """The size and SHA-256 (hex) of a local file or of bytes, reading a file in chunks.

    A file's SHA-256 is remembered by its path, size, modification time and inode, so
    asking again about an unchanged file reads nothing."""
    sha = hashlib.sha256()
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        sha.update(view)
        return len(view), sha.hexdigest()
    key = _file_key(source)
    with _known_lock:
        known = _known.get(key)
    if known is not None:
        return key[1], known
    size = 0
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    if _file_key(source) == key and size == key[1]:  # unchanged while it was read
        with _known_lock:
            while len(_known) >= _KNOWN_LIMIT:
                del _known[next(iter(_known))]
            _known[key] = sha.hexdigest()
    return size, sha.hexdigest()


@implementer(IPullProducer)
class RunSender:
    """Writes exactly C{size} bytes of a file or of buffers to a transport, one chunk
    each time the transport asks for more (a pull producer, so TCP's flow control holds
    and nothing is read or copied whole).

    A file that shrank since it was hashed is padded with zeros so the connection stays
    in step; the board then refuses the upload with L{ChecksumMismatch}.
    """

    def __init__(self, transport: Any, source: str | os.PathLike[str] | list[memoryview],
                 size: int, progress: Progress | None) -> None:
        self.transport = transport
        self.size = size
        self.sent = 0
        self.progress = progress
        self.done: Deferred[None] = Deferred()
        self._file: IO[bytes] | None = None
        self._views: list[memoryview] = []
        self._index = 0
        self._offset = 0
        if isinstance(source, list):
            self._views = [v for v in source if len(v)]
        else:
            self._file = open(source, "rb")  # noqa: SIM115 - closed in _finish

    def start(self) -> Deferred[None]:
        if self.size == 0:
            self._finish(None)
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
        if self.done.called:
            return
        want = min(CHUNK if self._file is not None else BUFFER_CHUNK, self.size - self.sent)
        chunk = self._take(want)
        if len(chunk) < want:
            chunk += bytes(want - len(chunk))
        self.sent += want
        self.transport.write(chunk)
        if self.progress is not None:
            self.progress(self.sent, self.size)
        if self.sent >= self.size:
            self.transport.unregisterProducer()
            self._finish(None)

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
               progress: Progress | None) -> RunSender | None:
    """The sender of a raw byte run of C{size} bytes, not started yet; or None when the
    run is in-memory buffers of at most L{CHUNK} bytes, which are then written to
    C{transport} at once."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = [memoryview(source).cast("B")]
    if isinstance(source, list) and size <= CHUNK:
        if size:
            transport.write(b"".join(source))
        if progress is not None:
            progress(size, size)
        return None
    return RunSender(transport, source, size, progress)
