"""The tracker's audit log: one JSON object per line for everything that matters later.

Events: ``hello`` (who connected, as which role), ``register`` (a board registered a
device), ``grant`` (a lease was granted), ``claim`` (a board redeemed a ticket), the
ends of leases under their outcome (``released``, ``expired``, ``kicked``,
``unclaimed``, ``device-lost``, ``client-lost``, ``session-ended``), ``request-ended``
(cancelled, timed out, withdrawn), ``drain``/``undrain``, ``tokens-reloaded`` and
``refused`` (any command the tracker answered with an error: a hello refused, a lease
that is not yours, a forged ticket, ...). Refusals of callers that have not shown who
they are (a refused hello, anything before one) are throttled by L{Throttle}: one line
per peer address a minute, the next one saying in ``repeated`` how many were left out,
so a flood of fake hellos writes a few lines, not one each.

Every line has ``time`` (Unix seconds) and ``event``; ``user``, ``device``, ``lease``,
``request``, ``reason`` and ``peer`` are there when they apply (``null`` otherwise), so a
line can be read without the others.

Lines are written and flushed one by one, so ``tail -f`` and log shippers see each
event as it happens; the file is opened for appending (rotate it with ``copytruncate``,
or send SIGHUP after moving it: the tracker reopens it then).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO, Any

import attrs

FIELDS = ("user", "device", "lease", "request", "reason", "peer")


@attrs.define(eq=False)
class AuditLog:
    """Append audit events as JSON lines to C{path} (or to an open C{stream})."""

    path: str | None = None
    clock: Callable[[], float] | None = None
    stream: IO[str] | None = None

    def __attrs_post_init__(self) -> None:
        if self.stream is None and self.path is not None:
            self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        """Close and reopen the file (after log rotation moved it)."""
        if self.path is None:
            return
        if self.stream is not None:
            self.stream.close()
        self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        if self.stream is not None and self.path is not None:
            self.stream.close()
            self.stream = None

    def write(self, event: str, **fields: Any) -> None:
        if self.stream is None:
            return
        import time

        entry: dict[str, Any] = {
            "time": round((self.clock or time.time)(), 6),
            "event": event,
        }
        for name in FIELDS:
            entry[name] = fields.pop(name, None)
        entry.update(fields)
        self.stream.write(json.dumps(entry, sort_keys=False, default=str) + "\n")
        self.stream.flush()


@attrs.define
class Throttle:
    """At most one line per key (a peer's address) per C{window} seconds, and at most
    C{burst} lines from all keys together in a window; what is held back is counted, and
    the count goes with the key's next line written. The keys kept are bounded (the
    oldest are dropped, their counts with them), so a flood from many addresses costs a
    bounded amount of memory and at most C{burst} lines a window."""

    window: float = 60.0
    burst: int = 100
    keys: int = 4096
    _held: dict[str, tuple[float, int]] = attrs.Factory(dict)
    """Per key: when its window began, and how many lines it has held back since."""
    _window_start: float = float("-inf")
    _written: int = 0

    def admit(self, key: str, now: float) -> int | None:
        """None: leave this line out. A count: write it, saying that many like it from
        C{key} were left out before it."""
        entry = self._held.get(key)
        if entry is not None and now - entry[0] < self.window:
            self._held[key] = (entry[0], entry[1] + 1)
            return None
        if now - self._window_start >= self.window:
            self._window_start, self._written = now, 0
        if self._written >= self.burst:
            self._hold(key, now, (entry[1] if entry is not None else 0) + 1)
            return None
        self._written += 1
        self._hold(key, now, 0)
        return entry[1] if entry is not None else 0

    def _hold(self, key: str, now: float, count: int) -> None:
        self._held.pop(key, None)
        while len(self._held) >= self.keys:
            del self._held[next(iter(self._held))]
        self._held[key] = (now, count)
