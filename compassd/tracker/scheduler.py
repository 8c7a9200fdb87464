"""The tracker's decisions: which device goes to which request, and when leases end.

This is the functional core of compass-tracker. It has no reactor, no sockets and no
clock of its own: every method takes the current time (seconds, from any monotonic
source) and returns the L{Effect}s the shell must carry out (tell a client it was granted,
tell a board its lease ended, ...). The shell also asks L{Scheduler.next_deadline} when to
call L{Scheduler.advance} next.

Promises, each checked by the tests:

- a device is never leased twice at once;
- every grant goes to the best eligible waiting request (see L{compassd.tracker.fairqueue}):
  by priority, then by fair share (board-seconds used lately per share, kept by a
  L{UsageLedger} per key that outlives the key's devices and requests) or, with a
  half-life of 0, by turns;
- a free device never sits idle while a request it can serve waits;
- every request ends exactly once: granted, cancelled, timed out or withdrawn, and an
  L{Effect} tells its owner which;
- every lease ends exactly once (released, expired, kicked, unclaimed, device lost, client
  lost, session ended) and its holder and board are told;
- a board that reports its sessions (L{reconcile}) and the tracker agree on what it
  serves: a stalled board's lease is suspended, not ended, until its deadline; a session
  the tracker does not know is adopted (never shown free) or ended on the board, and the
  device is free only once the board confirms;
- ids never repeat across tracker starts: each start has its own L{Scheduler.epoch}.

Owners are opaque identifiers of connections: the core only compares them.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import (
    BadRequest,
    DeviceConflict,
    LimitExceeded,
    NoSuchDevice,
    NoSuchKey,
    NoSuchRequest,
    NotYourLease,
    TicketRejected,
)
from . import explain, restart
from .reconcile import ADOPTED, SessionReport, Verdict, decide
from .records import (
    COMPASSD,
    Device,
    DeviceChanged,
    DeviceState,
    Effect,
    EndOnBoard,
    Lease,
    LeaseOutcome,
    Owner,
    QueueChanged,
    Request,
    RequestOutcome,
)
from .scheduler_state import SchedulerState


@attrs.define
class Scheduler(SchedulerState):
    """Device pools by key, a fair queue per key, and leases: the decisions.

    The state, its views and the lowest-level changes (and the options: C{policy},
    C{new_ticket}, C{id_prefix}) are in L{SchedulerState}.
    """
    # --- devices ----------------------------------------------------------------------

    def register(
        self,
        now: float,
        owner: Owner,
        name: str,
        key: str,
        address: str,
        *,
        tags: Iterable[str] = (),
        info: Iterable[str] = (),
        max_lease: float | None = None,
        healthy: bool = True,
        flavor: str = COMPASSD,
        takeover: bool = False,
        reports: bool = False,
        serving: SessionReport | None = None,
    ) -> list[Effect]:
        """Add or update a device. A name held by another live owner is refused unless
        C{takeover} (the shell allows it for the same board identity).

        An offline device that comes back under its key keeps what an admin set on it
        (draining) and a lease brought back from the store after a restart; a board that
        C{reports} and does not serve that lease ends it.

        A board that C{reports} says what the device serves (C{serving}, or None for
        nothing), and the tracker reconciles with it before the device can be granted
        (L{compassd.tracker.reconcile}); the device keeps its lease across the board's
        new connection."""
        effects: list[Effect] = []
        existing = self._devices.get(name)
        draining = False
        kept: Lease | None = None
        if existing is not None:
            if existing.online and existing.owner != owner and not takeover:
                raise DeviceConflict(
                    f"Device {name} is already registered by another live connection;"
                    " pick another name or stop the other server."
                )
            if existing.key != key or existing.owner != owner or not existing.online:
                if existing.key == key and reports and existing.reports:
                    self._move(now, existing, owner)
                else:
                    if existing.key == key and not existing.online:
                        draining = existing.draining
                        kept, existing.lease = existing.lease, None
                    effects += self._remove_device(now, existing, "re-registered")
                    existing = None
        if existing is None:
            device = Device(
                name=name,
                key=key,
                owner=owner,
                address=address,
                tags=frozenset(tags),
                info=tuple(info),
                max_lease=max_lease,
                flavor=flavor,
                registered_at=now,
                healthy=healthy,
                draining=draining,
                reports=reports,
            )
            self._devices[name] = device
            self._pool(key).devices[name] = device
            self._boards.setdefault(owner, set()).add(name)
            if kept is not None:
                kept.device = device
                device.lease = kept
                if reports and (serving is None or serving.lease != kept.id):
                    effects += self._end_lease(
                        now, kept, LeaseOutcome.DEVICE_LOST,
                        f"Lease {kept.id} ended: device {name} came back without it after"
                        " the tracker restarted.", revoke=False)
            effects.append(DeviceChanged(device, device.state, "registered"))
        else:
            device = existing
            device.address = address
            device.tags = frozenset(tags)
            device.info = tuple(info)
            device.max_lease = max_lease
            device.healthy = healthy
            device.reports = reports
            effects.append(DeviceChanged(device, device.state, "registration updated"))
        if reports:
            effects += self._reconcile(now, device, serving)
        self._refresh(now, device, effects)
        return effects

    def reconcile(
        self, now: float, owner: Owner, name: str, serving: SessionReport | None
    ) -> list[Effect]:
        """The board of C{name} says what it serves (C{serving}: a lease, or None for
        nothing): continue, adopt or end leases so the tracker agrees with it (see
        L{compassd.tracker.reconcile}). A device whose board does not report is left
        alone."""
        device = self._owned_device(owner, name)
        if not device.reports:
            return []
        effects = self._reconcile(now, device, serving)
        self._refresh(now, device, effects)
        return effects

    def devices_of(self, owner: Owner) -> list[str]:
        """The names of the devices registered on C{owner}'s connection."""
        return sorted(self._boards.get(owner, ()))

    def unregister(self, now: float, owner: Owner, name: str) -> list[Effect]:
        device = self._owned_device(owner, name)
        return self._remove_device(now, device, "unregistered by its board")

    def forget(self, now: float, name: str, why: str) -> list[Effect]:
        """Remove an offline device now, before L{Policy.forget_offline} would (the shell
        forgets TVM servers sooner); an online or unknown one is left alone."""
        device = self._devices.get(name)
        if device is None or device.online:
            return []
        return self._remove_device(now, device, why)

    def set_health(
        self, now: float, owner: Owner, name: str, healthy: bool, detail: str = ""
    ) -> list[Effect]:
        device = self._owned_device(owner, name)
        effects: list[Effect] = []
        if device.healthy != healthy or device.health_detail != detail:
            device.healthy = healthy
            device.health_detail = detail
            why = "healthy again" if healthy else f"unhealthy: {detail or 'no detail'}"
            effects.append(DeviceChanged(device, device.state, why))
        self._refresh(now, device, effects)
        return effects

    def set_draining(self, now: float, name: str, draining: bool) -> list[Effect]:
        device = self._devices.get(name)
        if device is None:
            raise NoSuchDevice(f"No device named {name} is registered.")
        effects: list[Effect] = []
        if device.draining != draining:
            device.draining = draining
            why = "draining: no new leases" if draining else "back in service"
            effects.append(DeviceChanged(device, device.state, why))
        self._refresh(now, device, effects)
        return effects

    def arm(self, now: float, owner: Owner, name: str) -> list[Effect]:
        """Offer a (TVM) device for one more grant."""
        device = self._owned_device(owner, name)
        effects: list[Effect] = []
        if not device.armed:
            device.armed = True
            effects.append(DeviceChanged(device, device.state, "offered again"))
        self._refresh(now, device, effects)
        return effects

    def board_lost(self, now: float, owner: Owner) -> list[Effect]:
        """The connection of a board went away: its devices go offline."""
        effects: list[Effect] = []
        for name in sorted(self._boards.pop(owner, ())):
            device = self._devices[name]
            device.online = False
            device.offline_since = now
            self._pools[device.key].offline.add(name)
            self._unfree(device)
            lease = device.lease
            if lease is not None and device.reports:
                lease.suspended_since = now  # its board may come back serving it
                effects.append(DeviceChanged(
                    device, device.state, f"its server stopped answering; {lease.id} of"
                    f" {lease.user} waits for it until the lease's deadline"))
            elif lease is not None:
                effects += self._end_lease(
                    now,
                    lease,
                    LeaseOutcome.DEVICE_LOST,
                    f"Device {name} went offline (its server stopped answering);"
                    " request another device.",
                    revoke=False,
                )
            effects.append(DeviceChanged(device, device.state, "its server went away"))
            if self.policy.forget_offline is not None:
                self._timer(now + self.policy.forget_offline, "forget", name)
        return effects

    # --- requests ---------------------------------------------------------------------

    def request(
        self,
        now: float,
        owner: Owner,
        user: str,
        key: str,
        *,
        priority: int = 1,
        tags: Iterable[str] = (),
        lease: float | None = None,
        wait: float | None = None,
        flavor: str = COMPASSD,
        secret: str = "",
        wait_for_board: bool = True,
    ) -> tuple[Request, list[Effect]]:
        """Queue a request; it may be granted at once (a L{Granted} effect). C{secret}:
        the SHA-256 of the secret its client re-attaches with after a restart.

        Without C{wait_for_board}, a request for a key no device serves (none registered,
        nor offline within L{Policy.forget_offline}) is refused with L{NoSuchKey} naming
        the keys that have devices, so a mistyped key fails at once."""
        if not wait_for_board:
            pool = self._pools.get(key)
            if pool is None or not pool.devices:
                raise NoSuchKey(explain.no_device(key, self.served_keys()))
        limit = self.policy.max_queued_per_user
        if limit is not None:
            queued = self._queued.get(user, 0)
            if queued >= limit:
                raise LimitExceeded(
                    f"User {user} already has {queued} requests waiting, the most allowed;"
                    " cancel one or wait for a grant."
                )
        if lease is not None and lease <= 0:
            raise BadRequest(f"A lease of {lease} seconds is not possible.")
        self._counter += 1
        request = Request(
            id=f"req-{self.id_prefix}{self._counter}",
            key=key,
            user=user,
            owner=owner,
            priority=priority,
            tags=frozenset(tags),
            lease_wanted=lease,
            wait=wait,
            flavor=flavor,
            arrival=self._counter,
            enqueued_at=now,
            deadline=None if wait is None else now + wait,
            secret=secret,
        )
        self._now = max(self._now, now)
        pool = self._pool(key)
        effects: list[Effect] = []
        self._enqueue(pool, request, now)
        device = next((d for d in pool.free.values() if d.can_serve(request.needs)), None)
        if device is not None:
            # A free device has no eligible waiting request (we match eagerly), so this
            # request is the best one it can serve, unless a request from before a
            # restart whose client has not re-attached yet keeps the device for itself.
            best = request
            if self._detached:
                best = pool.queue.best_for(device.can_serve, now) or request
            if best.detached_until is None:
                effects += self._grant(now, device, best)
                if best is request:
                    return request, effects
        if request.deadline is not None:
            self._timer(request.deadline, "wait", request.id)
        effects.append(QueueChanged(key))
        return request, effects

    def cancel(
        self, now: float, request_id: str, user: str, *, admin: bool = False
    ) -> list[Effect]:
        request = self._requests.get(request_id)
        if request is None:
            raise NoSuchRequest(
                f"Request {request_id} is not waiting: it was granted, ended, or never made."
            )
        if request.user != user and not admin:
            raise NotYourLease(
                f"Request {request_id} belongs to {request.user}; only they or an admin"
                " may cancel it."
            )
        by = "its owner" if request.user == user else f"admin {user}"
        return self._end_request(
            now, request, RequestOutcome.CANCELLED, f"Request {request_id} was cancelled by {by}."
        )

    def client_lost(self, now: float, owner: Owner) -> list[Effect]:
        """A client's connection went away: withdraw its requests, end its leases."""
        effects: list[Effect] = []
        owned = sorted(self._by_owner.get(owner, ()))
        # Requests first: a device freed by one of its leases must not go to another of
        # its own requests.
        for ident in owned:
            if ident in self._requests:
                effects += self._end_request(
                    now,
                    self._requests[ident],
                    RequestOutcome.WITHDRAWN,
                    f"Request {ident} was withdrawn: its client disconnected.",
                )
        for ident in owned:
            if ident in self._leases:
                effects += self._end_lease(
                    now,
                    self._leases[ident],
                    LeaseOutcome.CLIENT_LOST,
                    f"Lease {ident} ended: its client disconnected.",
                )
        return effects

    # --- leases -----------------------------------------------------------------------

    def release(self, now: float, lease_id: str, user: str) -> list[Effect]:
        lease = self._lease(lease_id)
        if lease.user != user:
            raise NotYourLease(
                f"Lease {lease_id} is held by {lease.user}, not {user}; an admin can kick it."
            )
        return self._end_lease(
            now, lease, LeaseOutcome.RELEASED, f"Lease {lease_id} was released by its holder."
        )

    def kick(self, now: float, lease_id: str, by: str, reason: str = "") -> list[Effect]:
        lease = self._lease(lease_id)
        why = f": {reason}" if reason else ""
        return self._end_lease(
            now, lease, LeaseOutcome.KICKED, f"Lease {lease_id} was ended by admin {by}{why}."
        )

    def redeem(self, now: float, owner: Owner, device_name: str, ticket: str) -> Lease:
        """Check a ticket a client presented to a board, and use it up."""
        lease = self.check_ticket(owner, device_name, ticket)
        del self._tickets[ticket]
        lease.redeemed = True
        lease.claim_deadline = None
        return lease

    def check_ticket(self, owner: Owner, device_name: str, ticket: str) -> Lease:
        """The lease C{ticket} would open a session of on C{device_name} (a device
        C{owner} registered), without using it up: a proxy asks before it has the board
        connect back; L{TicketRejected} or L{NoSuchDevice} otherwise."""
        device = self._owned_device(owner, device_name)
        lease = self._tickets.get(ticket)
        if lease is None and self._restored_tickets:
            hashed = hashlib.sha256(ticket.encode("utf-8")).hexdigest()
            lease = self._restored_tickets.pop(hashed, None)
            if lease is not None:
                self._tickets[ticket] = lease
        if lease is None:
            raise TicketRejected(
                "The ticket is not valid: it was never issued, already used, or its lease"
                " ended. Request the device again."
            )
        if lease.device is not device:
            raise NoSuchDevice(
                f"The ticket was not granted for device {device_name}; present it to the"
                " device named in the grant."
            )
        return lease

    def session_ended(
        self, now: float, owner: Owner, device_name: str, lease_id: str, detail: str = ""
    ) -> list[Effect]:
        device = self._owned_device(owner, device_name)
        if device.ending == lease_id:
            device.ending = None  # the board confirms the end the tracker asked for
            effects: list[Effect] = [
                DeviceChanged(device, device.state, f"its board has ended {lease_id}")]
            self._refresh(now, device, effects)
            return effects
        lease = self._leases.get(lease_id)
        if lease is None or lease.device is not device:
            # Ended already from our side (release, expiry, kick): nothing to do.
            return []
        why = f": {detail}" if detail else ""
        return self._end_lease(
            now,
            lease,
            LeaseOutcome.SESSION_ENDED,
            f"Lease {lease_id} ended with its session on {device_name}{why}.",
            revoke=False,
        )

    # --- restarts (compassd.tracker.restart) ----------------------------------------

    def restore(self, now: float, **state: Any) -> list[Effect]:
        """Bring back state from before a restart: see L{restart.restore}."""
        return restart.restore(self, now, **state)

    def reattach(
        self, now: float, owner: Owner, ident: str, user: str, secret: str
    ) -> tuple[Request | Lease, list[Effect]]:
        """A client takes back its request or lease: see L{restart.reattach}."""
        return restart.reattach(self, now, owner, ident, user, secret)

    # --- time -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        while self._timers and not self._timer_live(self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance(self, now: float) -> list[Effect]:
        """End whatever is due at C{now}: wait timeouts, lease expiries, unclaimed tickets."""
        effects: list[Effect] = []
        self._now = max(self._now, now)
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            if not self._timer_live(timer):
                continue
            _, _, kind, ident = timer
            if kind == "wait":
                request = self._requests[ident]
                effects += self._end_request(
                    now,
                    request,
                    RequestOutcome.TIMED_OUT,
                    f"Request {ident} for {request.key} timed out after waiting"
                    f" {request.wait:g} s.",
                )
            elif kind == "lease" and self._leases[ident].suspended_since is not None:
                lease = self._leases[ident]
                away = now - (lease.suspended_since or now)
                effects += self._end_lease(
                    now,
                    lease,
                    LeaseOutcome.DEVICE_LOST,
                    f"Lease {ident} on {lease.device.name} ended at its deadline: its board"
                    f" stopped answering {away:.0f} s before and did not come back."
                    " Request another device.",
                )
            elif kind == "lease":
                lease = self._leases[ident]
                effects += self._end_lease(
                    now,
                    lease,
                    LeaseOutcome.EXPIRED,
                    f"Lease {ident} on {lease.device.name} expired after {lease.seconds:g} s.",
                )
            elif kind == "claim":
                lease = self._leases[ident]
                effects += self._end_lease(
                    now,
                    lease,
                    LeaseOutcome.UNCLAIMED,
                    f"Lease {ident} on {lease.device.name} ended: its ticket was not used"
                    f" within {self.policy.claim_timeout:g} s.",
                )
            elif kind == "forget":
                device = self._devices[ident]
                effects += self._remove_device(now, device, "offline too long")
            elif kind == "grace":
                effects += restart.grace_over(self, now, ident)
        return effects

    # --- reconciliation (the decisions are in compassd.tracker.reconcile) ---------------

    def _move(self, now: float, device: Device, owner: Owner) -> None:
        """C{device}'s board is back on a new connection: keep the device (and its lease)."""
        owned = self._boards.get(device.owner)
        if owned is not None:
            owned.discard(device.name)
            if not owned:
                del self._boards[device.owner]
        device.owner = owner
        device.online = True
        device.offline_since = None
        self._pools[device.key].offline.discard(device.name)
        self._boards.setdefault(owner, set()).add(device.name)

    def _reconcile(
        self, now: float, device: Device, report: SessionReport | None
    ) -> list[Effect]:
        effects: list[Effect] = []
        known = self._leases.get(report.lease) if report is not None else None
        for verdict in decide(device, report, known, self.epoch):
            current = device.lease
            if verdict is Verdict.CONFIRMED:
                ended, device.ending = device.ending, None
                effects.append(DeviceChanged(device, device.state,
                                             f"its board has ended {ended}"))
            elif verdict is Verdict.CONTINUE and known is not None:
                known.redeemed = True
                known.claim_deadline = None
                self._tickets.pop(known.ticket, None)
            elif verdict is Verdict.GONE and current is not None:
                effects += self._end_lease(
                    now, current, LeaseOutcome.DEVICE_LOST
                    if current.suspended_since is not None else LeaseOutcome.SESSION_ENDED,
                    f"Lease {current.id} on {device.name} ended: its board came back"
                    " without the session (its server was restarted). Request another"
                    " device." if current.suspended_since is not None else
                    f"Lease {current.id} on {device.name} ended: its board no longer"
                    " serves the session. Request the device again.",
                    revoke=False, refresh=False)
            elif verdict is Verdict.DISPLACE and current is not None and report:
                effects += self._end_lease(
                    now, current, LeaseOutcome.DEVICE_LOST,
                    f"Lease {current.id} on {device.name} ended before its session opened:"
                    f" the board still serves lease {report.lease} of {report.holder} from"
                    " before the tracker restarted. Request the device again.",
                    revoke=False, refresh=False)
            elif verdict is Verdict.ADOPT and report is not None:
                effects += self._adopt(now, device, report)
            elif verdict is Verdict.REVOKE and report is not None:
                device.ending = report.lease
                effects.append(EndOnBoard(
                    device, report.lease, "ended",
                    f"Lease {report.lease} is not active at the tracker (it ended there);"
                    f" its session on {device.name} ends now. Request the device again."))
        lease = device.lease
        if lease is not None and lease.suspended_since is not None and device.online:
            away = now - lease.suspended_since
            lease.suspended_since = None
            effects.append(DeviceChanged(device, device.state, f"its board is back after"
                                         f" {away:.1f} s; {lease.id} of {lease.user} goes on"))
        return effects

    def _adopt(self, now: float, device: Device, report: SessionReport) -> list[Effect]:
        """Hold C{device} busy for the lease its board serves, from before a restart."""
        request = Request(
            id=f"adopted-{report.lease}", key=device.key, user=report.holder,
            owner=ADOPTED, priority=0, tags=frozenset(), lease_wanted=None, wait=None,
            flavor=device.flavor, arrival=0, enqueued_at=now, deadline=None)
        lease = Lease(
            id=report.lease, ticket=self.new_ticket(), device=device, request=request,
            granted_at=now, deadline=now + max(0.0, report.expires_in),
            claim_deadline=None, redeemed=True, adopted=True)
        device.lease = lease
        self._unfree(device)
        self._leases[lease.id] = lease
        self._timer(lease.deadline, "lease", lease.id)
        return [DeviceChanged(device, DeviceState.BUSY,
                              f"serving {lease.id} of {lease.user}, adopted from its board"
                              f" ({report.expires_in:.0f} s left)")]

    def _remove_device(self, now: float, device: Device, why: str) -> list[Effect]:
        effects: list[Effect] = []
        device.online = False  # so that ending its lease does not grant it again
        if device.lease is not None:
            effects += self._end_lease(
                now,
                device.lease,
                LeaseOutcome.DEVICE_LOST,
                f"Device {device.name} left the pool ({why}); request another device.",
                revoke=False,
            )
        pool = self._pools[device.key]
        pool.free.pop(device.name, None)
        pool.offline.discard(device.name)
        del pool.devices[device.name]
        del self._devices[device.name]
        owned = self._boards.get(device.owner)
        if owned is not None:
            owned.discard(device.name)
            if not owned:
                del self._boards[device.owner]
        self._forget_if_empty(device.key)
        effects.append(DeviceChanged(device, DeviceState.OFFLINE, f"removed: {why}"))
        return effects
