"""compassd.hashing: a SHA-256 fed in order on the reactor thread and computed in another.

A hand-driven runner shows the batching and the order; a real reactor's thread pool
shows that the hashing happens off the reactor thread and gives the right digest.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from compassd.hashing import StreamHash, threads_of


class HandRunner:
    """An C{in_thread} whose jobs run only when the test says (C{run_next})."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((function, args, d))
        return d

    def run_next(self) -> None:
        function, args, d = self.jobs.pop(0)
        try:
            d.callback(function(*args))
        except Exception:
            d.errback(Failure())


def fired(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_pieces_are_hashed_in_order_one_batch_at_a_time_while_more_arrive() -> None:
    runner = HandRunner()
    hashing = StreamHash(runner)
    pieces = [os.urandom(n) for n in (10, 3000, 1, 70_000, 5)]
    hashing.update(pieces[0])
    assert len(runner.jobs) == 1 and hashing.backlog == 10
    for piece in pieces[1:4]:  # arrive while the first batch is hashed
        hashing.update(piece)
    assert len(runner.jobs) == 1  # one batch at a time, so the order holds
    half = fired(hashing.below(71_001))
    done = fired(hashing.digest())
    runner.run_next()  # the first piece; the next three go as one batch
    assert hashing.backlog == 73_001 and half == [] and len(runner.jobs) == 1
    hashing.update(pieces[4])
    runner.run_next()
    assert half == [None] and done == []
    runner.run_next()
    assert hashing.backlog == 0 and not runner.jobs
    assert done == [hashlib.sha256(b"".join(pieces)).digest()]
    assert hashing.taken == sum(map(len, pieces))


def test_below_fires_at_once_when_the_backlog_is_small_and_empty_input_has_a_digest() -> None:
    hashing = StreamHash(HandRunner())
    assert fired(hashing.below(0)) == [None]
    hashing.update(b"")
    assert fired(hashing.digest()) == [hashlib.sha256().digest()]


def test_a_failed_batch_fails_the_digest_and_wakes_every_waiter() -> None:
    runner = HandRunner()
    hashing = StreamHash(runner)
    hashing.update(b"abc")
    hashing.update(b"def")
    waiting = fired(hashing.below(0))
    result = fired(hashing.digest())
    function, args, d = runner.jobs.pop(0)
    d.errback(Failure(MemoryError("no room")))
    assert waiting == [None]
    assert isinstance(result[0], Failure) and result[0].check(MemoryError)


def test_at_once_without_a_thread_pool() -> None:
    hashing = StreamHash(threads_of(None))
    hashing.update(b"x" * 100)
    assert hashing.backlog == 0
    assert fired(hashing.digest()) == [hashlib.sha256(b"x" * 100).digest()]
    assert threads_of(object()) is maybeDeferred


@pytest_twisted.inlineCallbacks
def test_on_a_real_reactor_the_pieces_are_hashed_in_its_thread_pool() -> Any:
    from twisted.internet import reactor

    threads: list[str] = []
    real_in_thread = threads_of(reactor)

    def recording(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def job(*inner: Any) -> Any:
            threads.append(threading.current_thread().name)
            return function(*inner)

        return real_in_thread(job, *args)

    hashing = StreamHash(recording)
    data = os.urandom(1 << 20)
    for at in range(0, len(data), 65536):
        hashing.update(data[at:at + 65536])
    value = yield hashing.digest().addTimeout(60, reactor)
    assert value == hashlib.sha256(data).digest()
    assert threads and threading.main_thread().name not in threads
