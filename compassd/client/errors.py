"""The exceptions the client library raises: each says what happened and what to do.

Errors the tracker or a board reports arrive as the classes in
L{compassd.protocol.errors} (all subclasses of L{CompassError}); the ones here describe
what the client itself saw.
"""

from __future__ import annotations

from ..protocol.errors import CompassError


class TrackerUnreachable(CompassError):
    """No connection to the tracker could be made, or it was lost."""

    code = b"TRACKER_UNREACHABLE"


class RequestFailed(CompassError):
    """A request for a device ended without a grant."""

    code = b"REQUEST_FAILED"

    def __init__(self, message: str, *, request: str = "", key: str = "",
                 position: int | None = None, waited: float | None = None) -> None:
        super().__init__(message)
        self.request = request
        self.key = key
        self.position = position
        self.waited = waited


class WaitTimeout(RequestFailed):
    """No device came free within the wait the request allowed."""

    code = b"WAIT_TIMEOUT"


class RequestCancelled(RequestFailed):
    """The request was cancelled, by its owner or an admin."""

    code = b"REQUEST_CANCELLED"


class RequestWithdrawn(RequestFailed):
    """The tracker withdrew the request (for instance, the connection dropped)."""

    code = b"REQUEST_WITHDRAWN"


class LeaseLost(CompassError):
    """A lease ended before its holder released it; C{reason} says how."""

    code = b"LEASE_LOST"

    def __init__(self, message: str, *, lease: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.lease = lease
        self.reason = reason


class LeaseExpired(LeaseLost):
    """The lease reached its deadline; request a longer lease next time (--lease)."""

    code = b"LEASE_EXPIRED"


class DeviceLost(LeaseLost):
    """The device went offline or left the pool during the lease."""

    code = b"DEVICE_LOST"
