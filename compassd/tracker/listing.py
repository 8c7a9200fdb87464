"""What the tracker shows of its state: rows for devices, queues and waiting requests.

Plain functions of the scheduler's objects and the time; the shell pages them into AMP
answers and ``compass status`` prints them.
"""

from __future__ import annotations

from typing import Any

from .records import Device, Request
from .scheduler import Scheduler


def device_row(device: Device, now: float) -> dict[str, Any]:
    lease = device.lease
    return {
        "name": device.name,
        "key": device.key,
        "address": device.address,
        "state": device.state.value,
        "health": "ok" if device.healthy else (device.health_detail or "unhealthy"),
        "holder": lease.user if lease else None,
        "lease": lease.id if lease else None,
        "held_for": (now - lease.granted_at) if lease else None,
        "lease_left": max(0.0, lease.deadline - now) if lease else None,
        "tags": sorted(device.tags),
        "info": list(device.info),
    }


def queue_row(scheduler: Scheduler, key: str) -> dict[str, Any]:
    return {
        "key": key,
        "free": scheduler.free_count(key),
        "total": scheduler.online_count(key),
        "waiting": len(scheduler.waiting_ids(key)),
    }


def waiting_row(request: Request, position: int, now: float, why: str = "") -> dict[str, Any]:
    return {
        "why": why,
        "request": request.id,
        "key": request.key,
        "user": request.user,
        "priority": request.priority,
        "position": position,
        "waited": now - request.enqueued_at,
        "tags": sorted(request.tags),
    }
