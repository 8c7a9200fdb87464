"""The tracker's scheduling state: pools of devices by key, waiting requests, leases and
timers, what can be read of them, and the lowest-level changes every decision is made of
(grant a device to a request, end a request, end a lease).

L{compassd.tracker.scheduler.Scheduler} builds on it with the decisions taken on each
event (a board registers, a client asks, a lease ends, time passes). Like it, this module
is part of the functional core: no reactor, no sockets, no clock of its own.
"""

from __future__ import annotations

import heapq
import secrets
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping

import attrs

from ..errors import NoSuchDevice, NoSuchLease, NoSuchRequest
from . import explain, restart
from .fairqueue import FairQueue
from .records import (
    COMPASSD,
    Device,
    DeviceChanged,
    Effect,
    Granted,
    Lease,
    LeaseEnded,
    LeaseOutcome,
    Owner,
    Policy,
    QueueChanged,
    Request,
    RequestEnded,
    RequestOutcome,
)
from .usage import UsageLedger


@attrs.define
class _Pool:
    """The devices and waiting requests of one key."""

    devices: dict[str, Device] = attrs.Factory(dict)
    offline: set[str] = attrs.Factory(set)
    """The names in C{devices} that are offline (so every request's answer can say how
    many are online without counting them)."""
    free: OrderedDict[str, Device] = attrs.Factory(OrderedDict)
    queue: FairQueue[Request] = attrs.Factory(FairQueue)


def _new_ticket() -> str:
    return secrets.token_urlsafe(32)


def _new_epoch() -> str:
    return secrets.token_hex(4)


@attrs.define
class SchedulerState:
    """Device pools by key, a fair queue per key, and leases: the state and its views.

    C{new_ticket} makes tickets; the default is 256 bits from the OS's random source.
    C{id_prefix} goes into every request and lease id (C{req-PREFIXN},
    C{lease-PREFIXN}): by default a new epoch of 32 random bits and a dot for each start
    (the shell gives a tracker with a store the store's epoch instead), so ids never
    repeat across tracker restarts; L{epoch} is the prefix without its dot.
    """

    policy: Policy = attrs.Factory(Policy)
    new_ticket: Callable[[], str] = _new_ticket
    id_prefix: str = attrs.Factory(lambda: f"{_new_epoch()}.")

    @property
    def epoch(self) -> str:
        """This start's part of every id: C{id_prefix} without its dot."""
        return self.id_prefix.removesuffix(".")

    _pools: dict[str, _Pool] = attrs.Factory(dict)
    _devices: dict[str, Device] = attrs.Factory(dict)
    _requests: dict[str, Request] = attrs.Factory(dict)
    _leases: dict[str, Lease] = attrs.Factory(dict)
    _tickets: dict[str, Lease] = attrs.Factory(dict)
    _restored_tickets: dict[str, Lease] = attrs.Factory(dict)  # by SHA-256, after a restart
    _by_owner: dict[Owner, set[str]] = attrs.Factory(dict)  # request and lease ids
    _boards: dict[Owner, set[str]] = attrs.Factory(dict)  # device names
    _timers: list[tuple[float, int, str, str]] = attrs.Factory(list)
    _queued: dict[str, int] = attrs.Factory(dict)  # waiting requests per user
    _counter: int = 0
    _grants: int = 0
    _ledgers: dict[str, UsageLedger] = attrs.Factory(dict)
    _now: float = 0.0
    """The latest time the scheduler was told: what views without a time use."""
    _detached: set[str] = attrs.Factory(set)  # restored ids whose clients have not re-attached
    _grace: float = 0.0

    # --- views ----------------------------------------------------------------------

    @property
    def devices(self) -> dict[str, Device]:
        return self._devices

    @property
    def requests(self) -> dict[str, Request]:
        """The waiting requests, by id."""
        return self._requests

    @property
    def leases(self) -> dict[str, Lease]:
        """The active leases, by id."""
        return self._leases

    def keys(self) -> list[str]:
        """Every key with a device or a waiting request: a pool left with neither is
        forgotten (its fair-share ledger stays while it has usage on record)."""
        return sorted(self._pools)

    def served_keys(self) -> list[str]:
        """The keys with a device registered (online, or offline but not yet forgotten)."""
        return sorted(k for k, pool in self._pools.items() if pool.devices)

    def pool_devices(self, key: str) -> list[Device]:
        pool = self._pools.get(key)
        return list(pool.devices.values()) if pool else []

    def online_count(self, key: str) -> int:
        pool = self._pools.get(key)
        return len(pool.devices) - len(pool.offline) if pool else 0

    def free_count(self, key: str) -> int:
        pool = self._pools.get(key)
        return len(pool.free) if pool else 0

    def waiting_ids(self, key: str) -> list[str]:
        """The ids of the waiting requests of C{key}, in no particular order (cheap)."""
        pool = self._pools.get(key)
        return [r.id for r in pool.queue] if pool else []

    def waiting(self, key: str, now: float | None = None) -> list[Request]:
        """The waiting requests of C{key} in queue order (at C{now}; by default the
        latest time the scheduler was told)."""
        pool = self._pools.get(key)
        return pool.queue.order(self._when(now)) if pool else []

    def positions(self, key: str, now: float | None = None) -> dict[str, int]:
        pool = self._pools.get(key)
        return pool.queue.positions(self._when(now)) if pool else {}

    def position(self, request_id: str, now: float | None = None) -> int:
        request = self._requests.get(request_id)
        if request is None:
            raise NoSuchRequest(f"Request {request_id} is not waiting.")
        return self._pools[request.key].queue.position_of(request_id, self._when(now))

    def reasons(
        self,
        key: str,
        now: float | None = None,
        order: list[Request] | None = None,
        only: Container[str] | None = None,
    ) -> dict[str, str]:
        """For each waiting request of C{key} (or those in C{only}), why it is where it
        is (a sentence); C{order}: L{waiting}'s answer at the same C{now}, if the caller
        has it."""
        pool = self._pools.get(key)
        if pool is None:
            return {}
        when = self._when(now)
        ledger = self._ledgers.get(key) if self.fair_share else None
        return explain.reasons(
            pool.queue.order(when) if order is None else order,
            None if ledger is None else (lambda user: ledger.usage(user, when)),
            self.share,
            only,
        )

    # --- fair share -------------------------------------------------------------------

    @property
    def fair_share(self) -> bool:
        """Whether users at one priority are ordered by usage (else they take turns)."""
        return self.policy.fair_share_half_life > 0

    def usage_keys(self) -> list[str]:
        """The keys with usage on record."""
        return sorted(self._ledgers)

    def usage(self, key: str, user: str, now: float | None = None) -> float:
        """C{user}'s decayed usage of C{key} in board-seconds (0 without fair share)."""
        ledger = self._ledgers.get(key)
        return ledger.usage(user, self._when(now)) if ledger else 0.0

    def settled_usage(self, key: str, user: str, now: float | None = None) -> float:
        """C{user}'s decayed usage of C{key} from ended leases (what the store keeps)."""
        ledger = self._ledgers.get(key)
        return ledger.settled(user, self._when(now)) if ledger else 0.0

    def usage_users(self, key: str) -> set[str]:
        ledger = self._ledgers.get(key)
        return ledger.users() if ledger else set()

    def share(self, user: str) -> float:
        return self.policy.shares.get(user, 1.0)

    def set_usage(self, now: float, key: str, user: str, seconds: float) -> None:
        """Set C{user}'s decayed usage of C{key} (restored from the store, or reset)."""
        if not self.fair_share:
            return
        self._now = max(self._now, now)
        self._ledger(key).set_usage(user, seconds, now)
        pool = self._pools.get(key)
        if pool is not None:
            pool.queue.rekey(now, user)

    def reset_usage(self, now: float, user: str | None = None) -> list[str]:
        """Forget C{user}'s usage of every key (everyone's with None); return the keys
        whose order may have changed."""
        keys = []
        for key, ledger in list(self._ledgers.items()):
            for name in [user] if user is not None else sorted(ledger.users()):
                self.set_usage(now, key, name, 0.0)
            keys.append(key)
        return keys

    def set_shares(self, now: float, shares: Mapping[str, float]) -> None:
        """New shares (the tokens file was read again): every queue is ordered afresh."""
        self.policy = attrs.evolve(self.policy, shares=dict(shares))
        for ledger in self._ledgers.values():
            ledger.shares = self.policy.shares
        for pool in self._pools.values():
            pool.queue.rekey(self._when(now))

    def recency(self, key: str) -> dict[str, int]:
        """The fair-share memory of C{key}: each user's last grant number."""
        pool = self._pools.get(key)
        return dict(pool.queue.recency) if pool else {}

    def owned_by(self, owner: Owner) -> set[str]:
        return set(self._by_owner.get(owner, ()))

    # --- internals --------------------------------------------------------------------

    def _when(self, now: float | None) -> float:
        return self._now if now is None else now

    def _pool(self, key: str) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            ledger = self._ledger(key) if self.fair_share else None
            pool = self._pools[key] = _Pool(queue=FairQueue(ledger=ledger))
        return pool

    def _ledger(self, key: str) -> UsageLedger:
        ledger = self._ledgers.get(key)
        if ledger is None:
            ledger = self._ledgers[key] = UsageLedger(
                self.policy.fair_share_half_life, self.policy.shares
            )
        return ledger

    def _enqueue(self, pool: _Pool, request: Request, now: float) -> None:
        self._requests[request.id] = request
        pool.queue.add(request, now)
        self._own(request.owner, request.id)
        self._queued[request.user] = self._queued.get(request.user, 0) + 1

    def _dequeue(self, request: Request, now: float) -> None:
        self._pools[request.key].queue.remove(request.id, now)
        del self._requests[request.id]
        self._disown(request.owner, request.id)
        left = self._queued[request.user] - 1
        if left:
            self._queued[request.user] = left
        else:
            del self._queued[request.user]

    def _own(self, owner: Owner, ident: str) -> None:
        self._by_owner.setdefault(owner, set()).add(ident)

    def _disown(self, owner: Owner, ident: str) -> None:
        owned = self._by_owner.get(owner)
        if owned is not None:
            owned.discard(ident)
            if not owned:
                del self._by_owner[owner]

    def _timer(self, when: float, kind: str, ident: str) -> None:
        self._counter += 1
        heapq.heappush(self._timers, (when, self._counter, kind, ident))
        # Timers of leases and requests that ended early stay in the heap until they
        # reach its top; at thousands of grants a second with long leases that is
        # millions. Each live request, lease or device has at most two live timers, so
        # past that (with room) the heap is mostly dead: rebuild it, amortised O(1).
        live = len(self._requests) + len(self._leases) + len(self._devices)
        if len(self._timers) > 4 * live + 1024:
            self._timers = [t for t in self._timers if self._timer_live(t)]
            heapq.heapify(self._timers)

    def _timer_live(self, timer: tuple[float, int, str, str]) -> bool:
        when, _, kind, ident = timer
        if kind == "wait":
            request = self._requests.get(ident)
            return request is not None and request.deadline == when
        if kind == "lease":
            lease = self._leases.get(ident)
            return lease is not None and lease.deadline == when
        if kind == "claim":
            lease = self._leases.get(ident)
            return lease is not None and lease.claim_deadline == when
        if kind == "grace":
            return restart.detached_until(self, ident) == when
        device = self._devices.get(ident)
        return (
            device is not None
            and not device.online
            and device.offline_since is not None
            and self.policy.forget_offline is not None
            and device.offline_since + self.policy.forget_offline == when
        )

    def _owned_device(self, owner: Owner, name: str) -> Device:
        device = self._devices.get(name)
        if device is None or not device.online or device.owner != owner:
            raise NoSuchDevice(f"Device {name} is not registered on this connection.")
        return device

    def _lease(self, lease_id: str) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise NoSuchLease(
                f"Lease {lease_id} is not active: it already ended or never existed."
            )
        return lease

    def _unfree(self, device: Device) -> None:
        self._pools[device.key].free.pop(device.name, None)

    def _refresh(self, now: float, device: Device, effects: list[Effect]) -> None:
        """Put C{device} to work if it can take a lease, else make sure it is not free."""
        if not device.grantable:
            self._unfree(device)
            return
        pool = self._pools[device.key]
        self._now = max(self._now, now)
        ledger = pool.queue.ledger
        if ledger is not None and ledger.rebase(now):
            pool.queue.rekey(now)
        request = pool.queue.best_for(device.can_serve, now)
        if request is None or request.detached_until is not None:
            pool.free.setdefault(device.name, device)
        else:
            self._unfree(device)
            effects += self._grant(now, device, request)

    def _grant(self, now: float, device: Device, request: Request) -> list[Effect]:
        pool = self._pools[device.key]
        self._grants += 1
        pool.queue.granted(request.user, self._grants)
        if pool.queue.ledger is not None:
            pool.queue.ledger.started(request.user, now)
        self._dequeue(request, now)
        self._counter += 1
        seconds = self.policy.lease_for(request.key, request.lease_wanted, device.max_lease)
        # TVM clients never redeem a ticket (TVM servers check match keys themselves).
        claim = self.policy.claim_timeout if device.flavor == COMPASSD else None
        if device.flavor != COMPASSD:
            device.armed = False
        lease = Lease(
            id=f"lease-{self.id_prefix}{self._counter}",
            ticket=self.new_ticket(),
            device=device,
            request=request,
            granted_at=now,
            deadline=now + seconds,
            claim_deadline=None if claim is None else now + min(claim, seconds),
        )
        device.lease = lease
        self._unfree(device)
        self._leases[lease.id] = lease
        self._tickets[lease.ticket] = lease
        self._own(request.owner, lease.id)
        self._timer(lease.deadline, "lease", lease.id)
        if lease.claim_deadline is not None and lease.claim_deadline < lease.deadline:
            self._timer(lease.claim_deadline, "claim", lease.id)
        return [
            Granted(lease),
            DeviceChanged(device, device.state, f"leased to {request.user} ({lease.id})"),
            QueueChanged(device.key),
        ]

    def _end_request(
        self, now: float, request: Request, outcome: RequestOutcome, message: str
    ) -> list[Effect]:
        pool = self._pools[request.key]
        self._now = max(self._now, now)
        position = pool.queue.position_of(request.id, now)
        self._dequeue(request, now)
        effects: list[Effect] = [
            RequestEnded(request, outcome, message, position, now - request.enqueued_at),
            QueueChanged(request.key),
        ]
        if request.id in self._detached:
            # It may have kept a free device waiting for it: offer the device again.
            self._detached.discard(request.id)
            restart.wake(self, now, pool, effects)
        self._forget_if_empty(request.key)
        return effects

    def _end_lease(
        self,
        now: float,
        lease: Lease,
        outcome: LeaseOutcome,
        message: str,
        *,
        revoke: bool = True,
        refresh: bool = True,
    ) -> list[Effect]:
        device = lease.device
        self._now = max(self._now, now)
        ledger = self._ledgers.get(lease.request.key)
        if ledger is not None:
            ledger.ended(lease.user, lease.granted_at, now)
        del self._leases[lease.id]
        self._tickets.pop(lease.ticket, None)
        if self._detached or self._restored_tickets:
            self._detached.discard(lease.id)
            self._restored_tickets.pop(lease.ticket.removeprefix("sha256:"), None)
        self._disown(lease.owner, lease.id)
        device.lease = None
        # A board has a session to end only if its client presented the ticket (a TVM
        # server has no tickets: it always hears).
        revoke = revoke and device.online and (lease.redeemed or device.flavor != COMPASSD)
        if revoke and device.reports:
            device.ending = lease.id  # not free until its board confirms
        effects: list[Effect] = [
            LeaseEnded(lease, outcome, message, revoke),
            DeviceChanged(device, device.state, f"{lease.id} {outcome.value}"),
        ]
        if device.online and refresh:
            self._refresh(now, device, effects)
        return effects

    def _forget_if_empty(self, key: str) -> None:
        """Forget the pool of C{key} once it has no device and no waiting request (and
        its ledger if it has no usage), so requests for made-up keys leave nothing."""
        pool = self._pools[key]
        if pool.devices or len(pool.queue):
            return
        del self._pools[key]
        ledger = self._ledgers.get(key)
        if ledger is not None and not ledger.users():
            del self._ledgers[key]
