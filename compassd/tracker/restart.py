"""The scheduler across a restart: its state brought back from the store, and clients
re-attaching to their requests and leases. Part of the scheduling core (no I/O): the
shell reads the store and hands in plain records (L{compassd.tracker.records}).

After a restart every request and lease is I{detached}: its owner is a placeholder until
its client re-attaches with the request's secret (the store keeps its SHA-256), within
the grace period; after that it ends with a recorded reason. A detached request keeps its
place: a device it would get waits for it (up to the grace period) rather than going to
a request behind it, so the order of grants is the one the tracker would have followed
without the restart.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import NoSuchRequest, NotYourLease
from .records import (
    Device,
    Effect,
    Lease,
    LeaseOutcome,
    QueueChanged,
    Request,
    RequestOutcome,
)

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .scheduler_state import SchedulerState, _Pool


@attrs.frozen
class Detached:
    """The owner of a request or lease whose client has not re-attached since the
    restart: unique to it, so no connection's loss ever ends it."""

    id: str


def restore(
    self: Scheduler,
    now: float,
    *,
    devices: Iterable[Device] = (),
    requests: Iterable[Request] = (),
    leases: Iterable[Lease] = (),
    recency: dict[str, dict[str, int]] | None = None,
    usage: Mapping[str, Mapping[str, float]] | None = None,
    grace: float = 60.0,
) -> list[Effect]:
    """Bring back state from before a restart; call before anything else happens.

    C{devices} come back offline (each keeps its draining flag) until their boards
    register; C{requests} (waiting) and C{leases} (whose C{device} is one of
    C{devices} and whose C{ticket} is C{"sha256:HASH"}) come back detached for
    C{grace} seconds. C{recency}: each key's turn-taking memory (user: grant number);
    C{usage}: fair share's, each key's users and their decayed board-seconds of ended
    leases at C{now} (a brought-back lease counts again from its grant as it runs).
    """
    self._grace = grace
    self._now = max(self._now, now)
    effects: list[Effect] = []
    for device in devices:
        device.online = False
        device.offline_since = now
        device.owner = Detached(f"device {device.name}")
        device.lease = None
        self._devices[device.name] = device
        pool = self._pool(device.key)
        pool.devices[device.name] = device
        pool.offline.add(device.name)
        if self.policy.forget_offline is not None:
            self._timer(now + self.policy.forget_offline, "forget", device.name)
    for key, users in (recency or {}).items():
        self._pool(key).queue.recency.update(users)
        self._grants = max([self._grants, *users.values()])
    if self.fair_share:
        for key, seconds_of in (usage or {}).items():
            self._pool(key)
            ledger = self._ledger(key)
            for user, seconds in seconds_of.items():
                ledger.set_usage(user, seconds, now)
    for request in sorted(requests, key=lambda r: r.arrival):
        self._counter = max(self._counter, request.arrival)
        detach(self, now, request, request.id)
        self._enqueue(self._pool(request.key), request, now)
        if request.deadline is not None:
            self._timer(request.deadline, "wait", request.id)
        effects.append(QueueChanged(request.key))
    for lease in leases:
        known = self._devices.get(lease.device.name)
        if known is None or known.lease is not None:
            continue
        lease.device = known
        known.lease = lease
        self._counter = max(self._counter, lease.request.arrival)
        detach(self, now, lease.request, lease.id)
        self._leases[lease.id] = lease
        self._own(lease.owner, lease.id)
        if self.fair_share:
            self._ledger(lease.request.key).started(lease.request.user, lease.granted_at)
        self._timer(lease.deadline, "lease", lease.id)
        if not lease.redeemed:
            self._restored_tickets[lease.ticket.removeprefix("sha256:")] = lease
            claim = self.policy.claim_timeout
            lease.claim_deadline = None if claim is None else min(now + claim,
                                                                  lease.deadline)
            if lease.claim_deadline is not None and lease.claim_deadline < lease.deadline:
                self._timer(lease.claim_deadline, "claim", lease.id)
    for pool in self._pools.values():  # the leases brought back count as they run
        pool.queue.rekey(now)
    return effects

def reattach(
    self: Scheduler, now: float, owner: Any, ident: str, user: str, secret: str
) -> tuple[Request | Lease, list[Effect]]:
    """A client that lost the tracker takes its request or lease back: C{secret} is
    the SHA-256 of the secret it was given. Returns the request (still waiting) or
    the lease, and what follows (a device that waited for it may be granted)."""
    request = self._requests.get(ident)
    lease = self._leases.get(ident)
    target = request if request is not None else lease.request if lease else None
    if target is None:
        raise NoSuchRequest(
            f"Request or lease {ident} is not waiting for its client: it ended while"
            " the client was away (see `compass history`) or never existed."
        )
    if target.user != user or not target.secret or not hmac.compare_digest(
            target.secret, secret):
        raise NotYourLease(
            f"{ident} was not made by this client: its user or secret does not match.")
    effects: list[Effect] = []
    if target.owner == owner:
        return (request or lease), effects  # type: ignore[return-value]
    if target.detached_until is None:
        raise NotYourLease(
            f"{ident} is held by another live connection; only a request or lease"
            " whose client was lost in a tracker restart can be re-attached.")
    self._disown(target.owner, ident)
    target.owner = owner
    target.detached_until = None
    self._detached.discard(ident)
    self._own(owner, ident)
    if request is not None:
        wake(self, now, self._pools[request.key], effects)
        return request, effects
    assert lease is not None
    return lease, effects

# --- for the scheduler ------------------------------------------------------------

def detach(self: Scheduler, now: float, request: Request, ident: str) -> None:
    request.owner = Detached(ident)
    request.detached_until = now + self._grace
    self._detached.add(ident)
    self._timer(request.detached_until, "grace", ident)

def detached_until(self: SchedulerState, ident: str) -> float | None:
    """When the detached request or lease C{ident} ends unless re-attached."""
    if ident not in self._detached:
        return None
    request = self._requests.get(ident)
    if request is None:
        lease = self._leases.get(ident)
        request = lease.request if lease is not None else None
    return None if request is None else request.detached_until

def grace_over(self: Scheduler, now: float, ident: str) -> list[Effect]:
    why = f"its client did not re-attach within {self._grace:g} s of the tracker's restart"
    request = self._requests.get(ident)
    if request is not None:
        return self._end_request(
            now, request, RequestOutcome.WITHDRAWN, f"Request {ident} was withdrawn: {why}.")
    return self._end_lease(
        now, self._leases[ident], LeaseOutcome.CLIENT_LOST, f"Lease {ident} ended: {why}.")

def wake(self: SchedulerState, now: float, pool: _Pool, effects: list[Effect]) -> None:
    """Offer the free devices of C{pool} again (a request they waited for moved)."""
    for device in list(pool.free.values()):
        self._refresh(now, device, effects)
