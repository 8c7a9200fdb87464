"""The conversation between a board server (``compass-server``, or a proxy on behalf of
the boards behind it) and the tracker: register devices, stay alive, report health, check
the tickets clients present, and learn when a lease ends.

A board keeps one connection to the tracker and may register several devices on it.
Any command from the board counts as a sign of life; L{Heartbeat} exists for quiet
periods. If the tracker hears nothing for its heartbeat timeout, it closes the
connection and the board's devices go offline.
"""

from __future__ import annotations

from twisted.protocols import amp

from ._command import CompassCommand

# --- board -> tracker ----------------------------------------------------------------


class Register(CompassCommand):
    """Add a device to the pool of C{key}, reachable by clients at C{address} (host:port).

    Registering a name the same connection already registered updates it; a name held
    by another live connection is refused with L{DeviceConflict}, and one whose
    connection went away is taken over. C{info} is a list of C{name=value} strings
    (backend, target, cores, driver, ...). C{max_lease} caps the leases of this device.
    C{flavor} says which session protocol the device speaks ("compassd" or "tvm").

    A board that C{reports} says, here and in every L{Heartbeat}, which session the
    device serves (C{lease}, its C{holder}, C{lease_expires_in} seconds left; none when
    absent) and confirms every L{Revoke} with L{SessionEnded}; the tracker reconciles its
    view with that (a restarted tracker adopts the session, a lease it ended is ended on
    the board). Boards that do not say C{reports} keep the older behaviour.
    """

    commandName = b"register"
    arguments = [
        (b"device", amp.Unicode()),
        (b"key", amp.Unicode()),
        (b"address", amp.Unicode()),
        (b"tags", amp.ListOf(amp.Unicode(), optional=True)),
        (b"info", amp.ListOf(amp.Unicode(), optional=True)),
        (b"max_lease", amp.Float(optional=True)),
        (b"healthy", amp.Boolean(optional=True)),
        (b"flavor", amp.Unicode(optional=True)),
        (b"reports", amp.Boolean(optional=True)),
        (b"lease", amp.Unicode(optional=True)),
        (b"holder", amp.Unicode(optional=True)),
        (b"lease_expires_in", amp.Float(optional=True)),
    ]
    response = [(b"heartbeat", amp.Float())]


class Unregister(CompassCommand):
    """Remove a device from its pool; an active lease on it ends as "device lost"."""

    commandName = b"unregister"
    arguments = [(b"device", amp.Unicode())]
    response = []


SESSION = amp.AmpList([
    (b"device", amp.Unicode()),
    (b"lease", amp.Unicode()),
    (b"holder", amp.Unicode()),
    (b"expires_in", amp.Float()),
])
"""A session a device serves: its lease, the lease's holder, seconds left."""


class Heartbeat(CompassCommand):
    """A sign of life; the answer proves the tracker is alive too.

    A board that registered with C{reports} lists in C{sessions} the session each of its
    devices serves (a device not listed serves none); without C{sessions} the heartbeat
    says nothing about sessions (a board checking a ticket right then leaves it out).
    """

    commandName = b"heartbeat"
    arguments = [(b"sessions", amp.AmpList(SESSION.subargs, optional=True))]
    response = []


class Health(CompassCommand):
    """Report a device's health; an unhealthy device is quarantined until it is healthy."""

    commandName = b"health"
    arguments = [
        (b"device", amp.Unicode()),
        (b"healthy", amp.Boolean()),
        (b"detail", amp.Unicode(optional=True)),
    ]
    response = []


class Redeem(CompassCommand):
    """A client presented C{ticket} to C{device}: is it good?

    A ticket is good once: for the device it was granted on, while its lease lasts. The
    answer says who holds the lease and for how many more seconds; otherwise the
    tracker raises L{TicketRejected} with the reason.
    """

    commandName = b"redeem"
    arguments = [(b"device", amp.Unicode()), (b"ticket", amp.Unicode())]
    response = [
        (b"lease", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"expires_in", amp.Float()),
    ]


class CheckTicket(CompassCommand):
    """compass-proxy asks, before it asks C{device}'s board to connect back for a client:
    would C{ticket} open a session on C{device} now?

    Sent on the connection that registered C{device}. The answer is L{Redeem}'s, but the
    ticket is not used up: the board redeems it when the session opens. A bad ticket
    gets L{TicketRejected} with the reason, and the proxy does nothing for its client.
    """

    commandName = b"check-ticket"
    arguments = [(b"device", amp.Unicode()), (b"ticket", amp.Unicode())]
    response = [
        (b"lease", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"expires_in", amp.Float()),
    ]


class SessionEnded(CompassCommand):
    """The board ended the session of C{lease} (the client closed it, or it failed)."""

    commandName = b"session-ended"
    arguments = [
        (b"device", amp.Unicode()),
        (b"lease", amp.Unicode()),
        (b"detail", amp.Unicode(optional=True)),
    ]
    response = []


# --- tracker -> board ----------------------------------------------------------------


class Revoke(CompassCommand):
    """The lease on C{device} ended at the tracker (released, expired, kicked, client
    lost): end its session now and clean up."""

    commandName = b"revoke"
    arguments = [
        (b"device", amp.Unicode()),
        (b"lease", amp.Unicode()),
        (b"reason", amp.Unicode()),
        (b"message", amp.Unicode()),
    ]
    requiresAnswer = False
