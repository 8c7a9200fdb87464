"""What the scheduling core works on and what it decides: devices, requests and leases,
the effects the shell carries out, and the policy that bounds leases and queues.

Plain attrs records with no behaviour beyond their own state: L{compassd.tracker.scheduler}
changes them, the Twisted shell reads them and carries out the L{Effect}s. Like the
scheduler, this module imports no Twisted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from enum import StrEnum
from typing import Union

import attrs

Owner = Hashable


class DeviceState(StrEnum):
    FREE = "free"
    BUSY = "busy"
    DRAINING = "draining"
    QUARANTINED = "quarantined"
    OFFLINE = "offline"


class RequestOutcome(StrEnum):
    GRANTED = "granted"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"
    WITHDRAWN = "withdrawn"


class LeaseOutcome(StrEnum):
    RELEASED = "released"
    EXPIRED = "expired"
    KICKED = "kicked"
    UNCLAIMED = "unclaimed"
    DEVICE_LOST = "device-lost"
    CLIENT_LOST = "client-lost"
    SESSION_ENDED = "session-ended"


COMPASSD = "compassd"
"""The flavor of devices and requests that speak compassd's session protocol."""


@attrs.define(eq=False)
class Device:
    name: str
    key: str
    owner: Owner
    address: str
    tags: frozenset[str]
    info: tuple[str, ...]
    max_lease: float | None
    flavor: str
    registered_at: float
    healthy: bool = True
    health_detail: str = ""
    draining: bool = False
    online: bool = True
    offline_since: float | None = None
    lease: Lease | None = None
    armed: bool = True
    """Whether the device is offered for a grant. compassd devices always are; a TVM
    server offers its device once per PUT, so a grant disarms it until the next PUT."""
    reports: bool = False
    """Whether its board reports the session it serves on every registration and
    heartbeat and confirms every end (L{compassd.tracker.reconcile})."""
    ending: str | None = None
    """A lease the tracker ended (or never held) that the board still has to end: the
    device is not granted until the board confirms."""

    @property
    def state(self) -> DeviceState:
        if not self.online:
            return DeviceState.OFFLINE
        if not self.healthy:
            return DeviceState.QUARANTINED
        if self.draining:
            return DeviceState.DRAINING
        if self.lease is not None or not self.armed or self.ending is not None:
            return DeviceState.BUSY
        return DeviceState.FREE

    @property
    def grantable(self) -> bool:
        return self.state is DeviceState.FREE

    def can_serve(self, needs: tuple[str, frozenset[str]]) -> bool:
        flavor, tags = needs
        return flavor == self.flavor and tags <= self.tags


@attrs.define(eq=False)
class Request:
    id: str
    key: str
    user: str
    owner: Owner
    priority: int
    tags: frozenset[str]
    lease_wanted: float | None
    wait: float | None
    flavor: str
    arrival: int
    enqueued_at: float
    deadline: float | None
    secret: str = ""
    """The SHA-256 (hex) of the secret its client re-attaches with after a restart."""
    detached_until: float | None = None
    """Set on a request (or the request of a lease) brought back from the store after a
    restart, until its client re-attaches: it ends at this time if nobody does."""

    @property
    def needs(self) -> tuple[str, frozenset[str]]:
        return (self.flavor, self.tags)


@attrs.define(eq=False)
class Lease:
    id: str
    ticket: str
    device: Device
    request: Request
    granted_at: float
    deadline: float
    claim_deadline: float | None
    redeemed: bool = False
    suspended_since: float | None = None
    """When its board stopped answering: the lease waits for the board until its deadline
    instead of ending (a board that reports its sessions only)."""
    adopted: bool = False
    """Taken over from what a board reported after a tracker restart."""

    @property
    def user(self) -> str:
        return self.request.user

    @property
    def owner(self) -> Owner:
        return self.request.owner

    @property
    def seconds(self) -> float:
        return self.deadline - self.granted_at


# --- effects: what the shell must do ------------------------------------------------


@attrs.frozen
class Granted:
    """Tell the request's owner it holds C{lease}."""

    lease: Lease


@attrs.frozen
class RequestEnded:
    """Tell the request's owner it ended without a grant, and why."""

    request: Request
    outcome: RequestOutcome
    message: str
    position: int
    waited: float


@attrs.frozen
class LeaseEnded:
    """Tell the lease's holder it ended; C{revoke} says whether the board must be told."""

    lease: Lease
    outcome: LeaseOutcome
    message: str
    revoke: bool


@attrs.frozen
class QueueChanged:
    """The waiting requests of C{key} changed: positions may have moved."""

    key: str


@attrs.frozen
class DeviceChanged:
    """C{device} changed state (for logs and live views)."""

    device: Device
    state: DeviceState
    why: str


@attrs.frozen
class EndOnBoard:
    """Tell C{device}'s board to end its session of C{lease}, a lease the tracker does not
    hold (it ended here, or is not this device's); the device waits for the board to
    confirm."""

    device: Device
    lease: str
    reason: str
    message: str


Effect = Union[Granted, RequestEnded, LeaseEnded, QueueChanged, DeviceChanged, EndOnBoard]


@attrs.frozen
class Policy:
    """How leases and queues are bounded; the tracker's options fill it in."""

    default_lease: float = 600.0
    max_lease: float = 3600.0
    key_max_lease: dict[str, float] = attrs.Factory(dict)
    claim_timeout: float | None = 60.0
    forget_offline: float | None = 86400.0
    max_queued_per_user: int | None = None
    fair_share_half_life: float = 86400.0
    """Seconds after which a board-second of usage counts half in fair share; 0: users
    at one priority take turns instead (who was granted least recently goes first)."""
    shares: Mapping[str, float] = attrs.Factory(dict)
    """Each user's share of the boards (from the tokens file); a user not named has 1."""

    def lease_for(self, key: str, wanted: float | None, device_max: float | None) -> float:
        """Seconds of lease a request gets: what it wanted (or the default), capped by the
        key's maximum and the device's own."""
        cap = self.key_max_lease.get(key, self.max_lease)
        if device_max is not None:
            cap = min(cap, device_max)
        return min(wanted if wanted is not None else self.default_lease, cap)
