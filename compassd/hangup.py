"""SIGHUP makes a daemon read its configuration files again, as daemons do.

L{ReloadOnHangup} is a service that, while it runs, turns SIGHUP into a call of
C{reload} on the reactor thread (the handler itself only schedules it: a signal can
arrive between any two bytecodes), and puts the previous handler back when it stops.
compass-tracker reloads its tokens file and reopens its audit log; compass-proxy reloads
its tokens file.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application import service


class ReloadOnHangup(service.Service):
    """Call C{reload} on the reactor thread each time the process gets SIGHUP."""

    def __init__(self, reactor: Any, reload: Callable[[], object]) -> None:
        self.reactor = reactor
        self.reload = reload
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP") and hasattr(self.reactor, "callFromThread"):
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()
