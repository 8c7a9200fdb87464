"""SHA-256 of a byte stream, computed in another thread while the stream goes on.

An upload's bytes pass through the reactor thread on both ends (read and sent by the
client, received and written by the board). Hashing them there, at about 1 GB/s, would
hold the reactor for a quarter of a second per 256 MiB and serialise hashing with
sending. L{StreamHash} takes the pieces in order on the reactor thread and hashes them in
another (hashlib releases the GIL for large updates), one batch at a time so the order
holds; the reactor thread only appends to a list.

    hashing = StreamHash(threads_of(reactor))
    hashing.update(piece)              # on the reactor thread, as pieces pass
    hashing.backlog                    # bytes taken but not hashed yet (flow control)
    hashing.below(limit)               # fires once the backlog is at most limit
    hashing.digest()                   # fires with the 32-byte digest of everything

C{in_thread} is how work reaches a thread: L{threads_of} gives one on a reactor's own
thread pool; tests on a Clock or an iosim pump pass L{maybeDeferred}, which hashes at
once and keeps them in step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

InThread = Callable[..., "Deferred[Any]"]
"""How work is sent to a thread: L{twisted.internet.threads.deferToThread}'s signature."""


def threads_of(reactor: Any) -> InThread:
    """Run work on C{reactor}'s thread pool; without a reactor that has one (C{None}, a
    test's fake) or while it is not running, run it at once on the calling thread."""
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return maybeDeferred

    def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if not getattr(reactor, "running", False):  # no reactor to deliver the result
            return maybeDeferred(function, *args, **kwargs)
        return deferToThreadPool(reactor, get_pool(), function, *args, **kwargs)

    return in_thread


def _update_all(sha: Any, pieces: list[bytes]) -> None:
    for piece in pieces:
        sha.update(piece)


class StreamHash:
    """The SHA-256 of pieces given in order to L{update}, hashed through C{in_thread}."""

    def __init__(self, in_thread: InThread) -> None:
        self._in_thread = in_thread
        self._sha = hashlib.sha256()
        self._queued: list[bytes] = []
        self._busy = False
        self._error: Failure | None = None
        self._waiting: list[tuple[int, Deferred[None]]] = []
        self.taken = 0
        """Bytes given to L{update} so far."""
        self.backlog = 0
        """Bytes given to L{update} and not hashed yet."""

    def update(self, piece: bytes) -> None:
        """Hash C{piece} after everything given before it. Never raises."""
        if not piece:
            return
        self._queued.append(piece)
        self.taken += len(piece)
        self.backlog += len(piece)
        self._next()

    def _next(self) -> None:
        if not self._busy and self._queued and self._error is None:
            self._start()
        self._settle()

    def _start(self) -> None:
        batch, self._queued = self._queued, []
        size = sum(len(piece) for piece in batch)
        self._busy = True
        d = self._in_thread(_update_all, self._sha, batch)

        def hashed(result: object) -> None:
            self._busy = False
            self.backlog -= size
            if isinstance(result, Failure):
                self._error = result
            self._next()

        d.addBoth(hashed)

    def _settle(self) -> None:
        """Fire the waiters whose condition now holds."""
        if self._busy:
            ready = [d for limit, d in self._waiting if self.backlog <= limit]
        else:
            ready = [d for _, d in self._waiting]
        if not ready:
            return
        self._waiting = [(limit, d) for limit, d in self._waiting if d not in ready]
        for d in ready:
            d.callback(None)

    def below(self, limit: int) -> Deferred[None]:
        """Fires once at most C{limit} bytes wait to be hashed (at once if so now)."""
        if self.backlog <= limit or self._error is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((limit, d))
        return d

    def digest(self) -> Deferred[bytes]:
        """Fires with the 32-byte digest of everything given so far, once it is hashed;
        fails if hashing failed. Give nothing more after asking."""

        def done(_: object) -> bytes:
            if self._error is not None:
                error, self._error = self._error, None
                error.raiseException()
            return self._sha.digest()

        return self.below(0).addCallback(done)
