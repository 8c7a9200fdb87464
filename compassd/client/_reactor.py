"""A private Twisted reactor on a daemon thread, for the blocking client API.

The blocking API must work in plain scripts, notebooks and programs that already run
Twisted's global reactor elsewhere, so it never touches the global reactor: it makes its
own reactor instance and runs it on a background thread. Calls cross into it with
C{callFromThread} and wait on an event, in short slices so Ctrl-C still interrupts them
(and cancels what was waited for).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

_lock = threading.Lock()
_reactor: Any = None


def _new_reactor() -> Any:
    try:
        from twisted.internet.epollreactor import EPollReactor

        return EPollReactor()
    except ImportError:  # not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()


def reactor() -> Any:
    """The private reactor, started on first use."""
    global _reactor
    with _lock:
        if _reactor is None:
            instance = _new_reactor()
            started = threading.Event()
            instance.callWhenRunning(started.set)
            thread = threading.Thread(
                target=instance.run,
                kwargs={"installSignalHandlers": False},
                name="compassd-client-reactor",
                daemon=True,
            )
            thread.start()
            started.wait(10)
            _reactor = instance
        return _reactor


def in_reactor_thread() -> bool:
    return _reactor is not None and threading.current_thread().name == "compassd-client-reactor"


def call(function: Callable[..., Any], *args: Any, timeout: float | None = None,
         **kwargs: Any) -> Any:
    """Run C{function} in the reactor thread and wait for its (Deferred) result.

    If the wait is interrupted (Ctrl-C) or C{timeout} passes, the Deferred is cancelled
    and the exception propagates.
    """
    if in_reactor_thread():
        raise RuntimeError("The blocking compassd client cannot be used from its own callbacks.")
    the_reactor = reactor()
    done = threading.Event()
    outcome: list[Any] = []
    started: list[Deferred[Any]] = []

    def start() -> None:
        d = maybeDeferred(function, *args, **kwargs)
        started.append(d)

        def finish(result: object) -> None:
            outcome.append(result)
            done.set()

        d.addBoth(finish)

    the_reactor.callFromThread(start)
    try:
        waited = 0.0
        while not done.wait(0.2):
            waited += 0.2
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"No answer within {timeout:g} s.")
    except BaseException:
        the_reactor.callFromThread(_cancel_all, started)
        raise
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _cancel_all(deferreds: list[Deferred[Any]]) -> None:
    for d in deferreds:
        d.cancel()
