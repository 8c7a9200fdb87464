"""What the dashboard shows of the tracker now: boards, queues and who waits, and why.

Plain functions of the scheduler and the time, so the HTML page, the JSON answer and
the server-sent events all show the same thing, and tests need no web server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..listing import device_row, queue_row
from ..records import Device, DeviceChanged, DeviceState, Effect, Request
from ..scheduler import Scheduler

WAITING_SHOWN = 100
"""Waiting requests shown per key (the rest are counted)."""

_MOVING = ("lease_left", "held_for", "waited")
"""Fields that change with the clock alone: a snapshot that differs only in them is not
news (the page counts them on by itself)."""


def last_errors(errors: dict[str, tuple[float, str]], effects: Iterable[Effect],
                now: float) -> None:
    """Remember, per device, the last time it went unhealthy and why (it stays on the
    page after the board recovers: a board that keeps failing shows)."""
    for effect in effects:
        if (isinstance(effect, DeviceChanged) and effect.state is DeviceState.QUARANTINED
                and effect.why.startswith("unhealthy")):
            errors[effect.device.name] = (now, effect.device.health_detail or effect.why)


def board_row(device: Device, now: float,
              errors: dict[str, tuple[float, str]] | None = None) -> dict[str, Any]:
    """One board (device) as the dashboard shows it."""
    row = device_row(device, now)
    # A healthy board's detail is what it runs on; an unhealthy one's is what went wrong.
    row["health"] = ("ok" + (f" ({device.health_detail})" if device.health_detail else "")
                     if device.healthy else "unhealthy")
    last = (errors or {}).get(device.name)
    if not device.healthy:
        row["last_error"] = device.health_detail or "no detail"
    elif last is not None:
        row["last_error"] = f"{last[1]} ({_ago(now - last[0])} ago)"
    else:
        row["last_error"] = None
    row["offline_for"] = (now - device.offline_since) if device.offline_since else None
    return row


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def why_waiting(request: Request, ahead: list[Request]) -> str:
    """Why C{request} waits behind C{ahead} (those before it in its queue), in words."""
    if not ahead:
        return "first in line: waits for a free device" + (
            f" with tags {', '.join(sorted(request.tags))}" if request.tags else "")
    higher = sum(1 for r in ahead if r.priority > request.priority)
    own = sum(1 for r in ahead if r.user == request.user and r.priority == request.priority)
    fair = len(ahead) - higher - own
    parts = []
    if higher:
        parts.append(f"{higher} at higher priority")
    if own:
        parts.append(f"{own} of {request.user}'s own, made earlier")
    if fair:
        parts.append(f"{fair} of users served less recently (fair share)")
    text = f"{len(ahead)} ahead: " + "; ".join(parts)
    if request.tags:
        text += f"; needs tags {', '.join(sorted(request.tags))}"
    return text


def waiting_rows(scheduler: Scheduler, key: str, now: float) -> tuple[list[dict[str, Any]], int]:
    """The first L{WAITING_SHOWN} waiting requests of C{key} and how many wait in all.
    A row's C{position} counts from 1 (1 is next in line), as C{compass status} shows it."""
    order = scheduler.waiting(key)
    rows = []
    for position, request in enumerate(order[:WAITING_SHOWN]):
        rows.append({
            "request": request.id,
            "key": key,
            "user": request.user,
            "priority": request.priority,
            "position": position + 1,
            "waited": now - request.enqueued_at,
            "tags": sorted(request.tags),
            "why": why_waiting(request, order[:position]),
        })
    return rows, len(order)


def snapshot(scheduler: Scheduler, now: float,
             errors: dict[str, tuple[float, str]] | None = None) -> dict[str, Any]:
    """Everything the live part of the page shows."""
    boards = [board_row(scheduler.devices[name], now, errors)
              for name in sorted(scheduler.devices)]
    queues = []
    for key in scheduler.keys():
        row = queue_row(scheduler, key)
        row["shown"], row["waiting"] = waiting_rows(scheduler, key, now)
        queues.append(row)
    return {"boards": boards, "queues": queues}


def fingerprint(state: dict[str, Any]) -> str:
    """A text that changes when C{state} changes in more than its clock-driven fields."""

    def still(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: still(v) for k, v in value.items() if k not in _MOVING}
        if isinstance(value, list):
            return [still(v) for v in value]
        return value

    return json.dumps(still(state), sort_keys=True)
