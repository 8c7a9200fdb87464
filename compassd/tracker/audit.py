"""The tracker's audit log: one JSON object per line for everything that matters later.

Events: ``hello`` (who connected, as which role), ``register`` (a board registered a
device), ``grant`` (a lease was granted), ``claim`` (a board redeemed a ticket), the
ends of leases under their outcome (``released``, ``expired``, ``kicked``,
``unclaimed``, ``device-lost``, ``client-lost``, ``session-ended``), ``request-ended``
(cancelled, timed out, withdrawn), ``drain``/``undrain``, ``tokens-reloaded`` and
``refused`` (any command the tracker answered with an error: a hello refused, a lease
that is not yours, a forged ticket, ...). Every line has ``time`` (Unix seconds) and
``event``; ``user``, ``device``, ``lease``, ``request``, ``reason`` and ``peer`` are there
when they apply (``null`` otherwise), so a line can be read without the others.

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
