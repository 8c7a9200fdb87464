"""An executor never outlives the server that started it.

Two mechanisms, because each has a gap the other closes:

- L{die_with_parent} asks the kernel (C{prctl(PR_SET_PDEATHSIG, SIGKILL)}) to kill this
  process the moment its parent dies, even while a driver call blocks it. Twisted 22.4's
  C{spawnProcess} has no hook that runs in the child before C{exec}, so the executor sets
  this itself, first thing (C{compassd/executor/_start.py}: before numpy, Twisted and
  the backend load, which take seconds on a busy board); a parent that died before that
  is caught by comparing C{os.getppid()} with the pid the server passed on the command
  line (C{--parent}).
- L{ParentWatch} checks the parent again every second from the executor's reactor, for
  kernels or sandboxes where C{prctl} is refused.

Whatever a dead server still left behind (an executor that was starting, a session
directory, an arena) is removed by the next start of the server
(L{compassd.server.leftovers}).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""

CHECK_INTERVAL = 1.0
"""Seconds between two checks of the parent in L{ParentWatch}."""


def die_with_parent(parent: int | None) -> bool:
    """Have the kernel SIGKILL this process when its parent dies; say whether the parent
    is still C{parent} (False: it died already and this process must exit now).

    Without C{parent} (an executor started by hand) nothing is set and True is returned.
    """
    if parent is None:
        return True
    if sys.platform.startswith("linux"):
        try:
            libc: Any = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: ParentWatch only
            pass
    return os.getppid() == parent


def parent_in(argv: list[str]) -> int | None:
    """The pid after C{--parent} in an executor's arguments, if any."""
    if "--parent" in argv[:-1]:
        try:
            return int(argv[argv.index("--parent") + 1])
        except ValueError:
            return None
    return None


class ParentWatch:
    """Call C{gone} once when this process's parent is no longer C{parent}.

    Driven by a C{LoopingCall} on the executor's reactor (L{start}); L{check} is the pure
    test, usable on its own.
    """

    def __init__(self, parent: int, gone: Callable[[], object],
                 getppid: Callable[[], int] = os.getppid) -> None:
        self.parent = parent
        self._gone = gone
        self._getppid = getppid
        self.fired = False

    def check(self) -> bool:
        """Whether the parent is still there; calls C{gone} (once) when it is not."""
        if self._getppid() == self.parent:
            return True
        if not self.fired:
            self.fired = True
            self._gone()
        return False

    def start(self, reactor: Any, interval: float = CHECK_INTERVAL) -> Any:
        from twisted.internet.task import LoopingCall

        loop = LoopingCall(self.check)
        loop.clock = reactor
        loop.start(interval, now=False).addErrback(lambda _: None)
        return loop
