"""What bench/chaos.py concludes from the records: pure functions of parsed logs.

Inputs are the clients' JSON lines, the tracker's audit log, the monitor's samples
(time, devices by name, waiting request ids) and the faults; nothing here touches a
process or a socket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Sample = tuple[float, dict[str, dict[str, Any]], set[str]]


def in_service(row: dict[str, Any] | None, excluded: set[str]) -> bool:
    """Free, or busy under a lease that is not one of C{excluded}, and healthy."""
    if row is None or row.get("health") != "ok":
        return False
    return row["state"] == "free" or (row["state"] == "busy"
                                      and row.get("lease") not in excluded)


def audit_ends(audit: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Request id -> when the tracker recorded its end (granted, or ended otherwise)."""
    ends: dict[str, float] = {}
    for line in audit:
        request = line.get("request")
        if request and line.get("event") in ("grant", "request-ended"):
            ends.setdefault(request, float(line["time"]))
    return ends


def lost_requests(clients: list[dict[str, Any]], audit: list[dict[str, Any]],
                  tracker_restarts: list[float], waiting_at_end: set[str],
                  history: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Requests with no recorded end, each as a sentence; and how many could not be
    checked (a client killed before the tracker told it the request's id).

    C{clients}: one dict per client process: C{lines} (its log), C{killed} (the soak
    killed it), C{hung} (it did not stop when told to). C{history}: request id ->
    outcome, from the tracker's store when it has one; an end there counts as an end in
    the audit log does.
    """
    ends = audit_ends(audit)
    for request in history or {}:
        ends.setdefault(request, 0.0)
    lost: list[str] = []
    unverifiable = 0
    for client in clients:
        open_requests: dict[int, dict[str, Any]] = {}
        for line in client["lines"]:
            n = line.get("n")
            if line["ev"] == "request":
                open_requests[n] = {"t": line["t"], "key": line.get("key")}
            elif line["ev"] == "queued" and n in open_requests:
                open_requests[n]["request"] = line["request"]
            elif line["ev"] in ("granted", "request-failed"):
                open_requests.pop(n, None)
        for n, info in open_requests.items():
            where = f"{client['name']} request #{n} ({info['key']})"
            if client["hung"]:
                lost.append(f"{where}: the client was still waiting at the end")
                continue
            if not client["killed"]:
                lost.append(f"{where}: the client exited without an end for it")
                continue
            request = info.get("request")
            if request is None:
                unverifiable += 1
                continue
            if request in ends:
                continue
            restarted = any(t >= info["t"] for t in tracker_restarts)
            lost.append(f"{where} {request}: no grant or end in the tracker's records"
                        + (" (the tracker was killed after it was queued)" if restarted
                           else ""))
    for request in sorted(waiting_at_end):
        lost.append(f"{request}: still waiting at the tracker after every client stopped")
    return lost, unverifiable


def stuck_leases(samples: list[Sample], limit: float) -> list[str]:
    """Leases the tracker showed for longer than C{limit} seconds."""
    seen: dict[tuple[str, str], float] = {}
    for _, devices, _ in samples:
        for name, row in devices.items():
            if row.get("lease") and row.get("held_for") is not None:
                key = (name, row["lease"])
                seen[key] = max(seen.get(key, 0.0), float(row["held_for"]))
    return [f"{name}: lease {lease} held {held:.0f} s (limit {limit:.0f} s)"
            for (name, lease), held in sorted(seen.items()) if held > limit]


def excluded_leases(samples: list[Sample], at: float, devices: list[str],
                    also: Iterable[str] = ()) -> set[str]:
    """The leases on C{devices} in the last sample before C{at}, and C{also}."""
    excluded = {x for x in also if x}
    before = [s for s in samples if s[0] <= at]
    if before:
        rows = before[-1][1]
        excluded |= {rows[d]["lease"] for d in devices if d in rows and rows[d].get("lease")}
    return excluded


LASTING = ("stop-board", "disk-full")
"""Faults that last a while by design: their recovery counts from their end."""
REGISTERING = ("kill-board", "kill-proxy", "kill-tracker", "stop-board")
"""Faults after which a board must register again: they recover when their devices are
online and healthy at the tracker, under whatever lease (a tracker with a store brings
its leases back, and their clients re-attach)."""


def online(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("health") == "ok" and row["state"] != "offline"


def recovery(samples: list[Sample], fault: dict[str, Any]) -> float | None:
    """Seconds from the fault (from its end, for L{LASTING} ones) until its devices were
    in service again (registered again, for L{REGISTERING} ones; for a client killed
    while queued: until its request left the queue); None if never seen."""
    at, until = float(fault["at"]), float(fault["until"])
    origin = until if fault["kind"] in LASTING else at
    if fault["kind"] == "kill-client-queued":
        request = fault.get("request")
        if not request:
            return None
        for t, _, waiting in samples:
            if t >= at and request not in waiting:
                return t - at
        return None
    devices = [d for d in fault.get("devices", []) if d]
    if not devices:
        return None
    excluded = excluded_leases(samples, at, devices, [fault.get("lease", "")])
    back = ((lambda row: online(row)) if fault["kind"] in REGISTERING
            else (lambda row: in_service(row, excluded)))
    for t, rows, _ in samples:
        if t >= until and all(back(rows.get(d)) for d in devices):
            return t - origin
    return None


def summarize(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"p50 {percentile(values, 50):.1f} s, max {max(values):.1f} s"
            f" (n={len(values)})")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def runs_in(clients: list[dict[str, Any]], window: tuple[float, float]) -> int:
    start, end = window
    return sum(1 for c in clients for line in c["lines"]
               if line["ev"] == "run-ok" and start <= line["t"] < end)


def store_history(path: str) -> dict[str, str]:
    """Request id -> outcome from the history table of a tracker's SQLite store (the
    tracker of issue 16 keeps a row for every lease and every unserved request); empty
    when there is no such file or table."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        rows = connection.execute(
            "SELECT request_id, outcome FROM compass_history WHERE request_id IS NOT NULL"
        ).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        connection.close()
    return {str(request): str(outcome) for request, outcome in rows}
