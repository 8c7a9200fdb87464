"""Between the scheduling core and the store: the core's objects and effects as store
records, and a store's snapshot as the core's objects again after a restart.

The shell (L{compassd.tracker.service}) journals with these; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from .records import (
    COMPASSD,
    Device,
    Lease,
    LeaseEnded,
    Request,
    RequestEnded,
)
from .scheduler import Scheduler
from .store import (
    DeviceRecord,
    HistoryRow,
    LeaseRecord,
    LiveState,
    RequestRecord,
    Snapshot,
)

RECENCY = "recency:"
"""Meta names: C{recency:KEY} holds that key's turn-taking memory as JSON."""
USAGE = "usage:"
"""Meta names: C{usage:["KEY", "USER"]} holds that user's fair-share usage of the key,
C{{"at": TIME, "seconds": DECAYED}} (ended leases only)."""


def ticket_hash(ticket: str) -> str:
    if ticket.startswith("sha256:"):
        return ticket[len("sha256:"):]  # brought back from the store: only the hash
    return hashlib.sha256(ticket.encode("utf-8")).hexdigest()


def device_record(device: Device) -> DeviceRecord:
    return DeviceRecord(
        name=device.name, key=device.key, address=device.address, flavor=device.flavor,
        tags=device.tags, max_lease=device.max_lease, drained=device.draining,
        quarantined=not device.healthy, quarantine_reason=device.health_detail,
        registered_at=device.registered_at)


def request_record(request: Request) -> RequestRecord:
    return RequestRecord(
        id=request.id, key=request.key, user=request.user, priority=request.priority,
        tags=request.tags, flavor=request.flavor, arrival=request.arrival,
        enqueued_at=request.enqueued_at, lease_wanted=request.lease_wanted,
        wait=request.wait, deadline=request.deadline, secret_hash=request.secret)


def lease_record(lease: Lease) -> LeaseRecord:
    request = lease.request
    return LeaseRecord(
        id=lease.id, device=lease.device.name, key=request.key, user=request.user,
        request_id=request.id, priority=request.priority, tags=request.tags,
        flavor=request.flavor, requested_at=request.enqueued_at,
        granted_at=lease.granted_at, deadline=lease.deadline,
        ticket_hash=ticket_hash(lease.ticket), redeemed=lease.redeemed,
        secret_hash=request.secret)


def lease_history(effect: LeaseEnded, now: float) -> HistoryRow:
    lease = effect.lease
    request = lease.request
    return HistoryRow(
        id=lease.id, user=request.user, key=request.key, requested_at=request.enqueued_at,
        ended_at=now, outcome=effect.outcome.value, granted_at=lease.granted_at,
        device=lease.device.name, request_id=request.id, priority=request.priority,
        detail=effect.message)


def request_history(effect: RequestEnded, now: float) -> HistoryRow:
    request = effect.request
    return HistoryRow(
        id=request.id, user=request.user, key=request.key,
        requested_at=request.enqueued_at, ended_at=now, outcome=effect.outcome.value,
        request_id=request.id, priority=request.priority, detail=effect.message)


def live_state(scheduler: Scheduler) -> LiveState:
    """Everything live in the scheduler, as the store keeps it."""
    return LiveState(
        devices=tuple(device_record(d) for d in scheduler.devices.values()),
        leases=tuple(lease_record(x) for x in scheduler.leases.values()),
        requests=tuple(request_record(r) for r in scheduler.requests.values()),
    )


def recency_meta(scheduler: Scheduler, keys: Iterable[str]) -> dict[str, str]:
    return {RECENCY + key: json.dumps(scheduler.recency(key), sort_keys=True)
            for key in keys}


def usage_meta(
    scheduler: Scheduler, pairs: Iterable[tuple[str, str]], now: float
) -> dict[str, str]:
    """The stored usage of each (key, user) in C{pairs} as it is at C{now}."""
    return {
        USAGE + json.dumps([key, user]): json.dumps(
            {"at": now, "seconds": scheduler.settled_usage(key, user, now)})
        for key, user in pairs
    }


def stored_usage(
    meta: dict[str, str], now: float, half_life: float
) -> dict[str, dict[str, float]]:
    """Each key's users and their usage at C{now}, decayed since it was stored."""
    usage: dict[str, dict[str, float]] = {}
    if not half_life > 0:
        return usage
    for name, value in meta.items():
        if not name.startswith(USAGE):
            continue
        key, user = json.loads(name[len(USAGE):])
        stored = json.loads(value)
        seconds = float(stored["seconds"])
        if seconds > 0:
            age = max(0.0, now - float(stored["at"]))
            usage.setdefault(str(key), {})[str(user)] = seconds * 2.0 ** (-age / half_life)
    return usage


def _request(record: RequestRecord | LeaseRecord, arrival: int) -> Request:
    if isinstance(record, RequestRecord):
        return Request(
            id=record.id, key=record.key, user=record.user, owner=None,
            priority=record.priority, tags=record.tags, lease_wanted=record.lease_wanted,
            wait=record.wait, flavor=record.flavor, arrival=record.arrival,
            enqueued_at=record.enqueued_at, deadline=record.deadline,
            secret=record.secret_hash)
    return Request(
        id=record.request_id, key=record.key, user=record.user, owner=None,
        priority=record.priority, tags=record.tags, lease_wanted=None, wait=None,
        flavor=record.flavor, arrival=arrival, enqueued_at=record.requested_at,
        deadline=None, secret=record.secret_hash)


def restore(scheduler: Scheduler, snapshot: Snapshot, now: float, grace: float) -> list:
    """Put C{snapshot} back into a new scheduler (see L{Scheduler.restore})."""
    live = snapshot.live
    devices = {
        d.name: Device(
            name=d.name, key=d.key, owner=None, address=d.address, tags=d.tags, info=(),
            max_lease=d.max_lease, flavor=d.flavor or COMPASSD,
            registered_at=d.registered_at, healthy=not d.quarantined,
            health_detail=d.quarantine_reason, draining=d.drained)
        for d in live.devices
    }
    leases = []
    for x in live.leases:
        device = devices.get(x.device)
        if device is None:
            continue
        leases.append(Lease(
            id=x.id, ticket="sha256:" + x.ticket_hash, device=device,
            request=_request(x, arrival=0), granted_at=x.granted_at, deadline=x.deadline,
            claim_deadline=None, redeemed=x.redeemed))
    recency = {
        name[len(RECENCY):]: {str(u): int(n) for u, n in json.loads(value).items()}
        for name, value in snapshot.meta.items() if name.startswith(RECENCY)
    }
    return scheduler.restore(
        now, devices=list(devices.values()),
        requests=[_request(r, r.arrival) for r in live.requests],
        leases=leases, recency=recency, grace=grace,
        usage=stored_usage(snapshot.meta, now, scheduler.policy.fair_share_half_life))
