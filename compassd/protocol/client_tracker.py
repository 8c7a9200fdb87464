"""The conversation between a client (a user's program or the ``compass`` command) and
the tracker: ask for a device, wait, get a lease, give it back; and look at the state.

A request is answered at once with its id and queue position. What happens to it later
arrives as commands the tracker sends to the client: L{Position} while it waits, then
either L{Granted} or L{RequestEnded}. A granted lease ends with L{LeaseEnded}, whoever
ended it. The tracker always sends the answer to L{Request} before any of these.
"""

from __future__ import annotations

from twisted.protocols import amp

from ._command import CompassCommand

# --- client -> tracker ---------------------------------------------------------------


class Request(CompassCommand):
    """Ask for a device of C{key}.

    C{priority}: higher is served first (TVM's convention; default 1).
    C{lease}: seconds of use wanted; the tracker caps it at the key's maximum and
    uses its default when absent. C{wait}: seconds the caller will wait in the queue
    before the request ends as timed out; absent means as long as it takes.
    C{tags}: the device must carry all of them. A key no device serves (none registered,
    nor offline lately) is refused with C{NO_SUCH_KEY} naming the keys that have devices,
    unless C{wait_for_board} asks to wait until one registers. The answer's C{devices}
    counts the key's online devices, so a caller can warn about a key nobody serves now.
    """

    commandName = b"request"
    arguments = [
        (b"key", amp.Unicode()),
        (b"priority", amp.Integer(optional=True)),
        (b"lease", amp.Float(optional=True)),
        (b"wait", amp.Float(optional=True)),
        (b"tags", amp.ListOf(amp.Unicode(), optional=True)),
        (b"wait_for_board", amp.Boolean(optional=True)),
    ]
    response = [
        (b"request", amp.Unicode()),
        (b"position", amp.Integer()),
        (b"devices", amp.Integer()),
        (b"why", amp.Unicode(optional=True)),
        (b"secret", amp.Unicode(optional=True)),
    ]
    """C{secret}: what the client presents to L{Reattach} this request (or its lease)
    after losing the tracker; a tracker without a store sends none."""


class Reattach(CompassCommand):
    """Take back a waiting request or a held lease after the tracker restarted: C{id}
    is the request's or lease's id, C{secret} the one the request's answer gave.

    The answer's C{state} is C{waiting} (with the request's C{position}) or C{leased}
    (with C{expires_in}). A request or lease that ended meanwhile (its grace period
    passed, or its wait timed out) is refused with C{NoSuchRequest}.
    """

    commandName = b"reattach"
    arguments = [
        (b"id", amp.Unicode()),
        (b"secret", amp.Unicode()),
    ]
    response = [
        (b"state", amp.Unicode()),
        (b"position", amp.Integer(optional=True)),
        (b"expires_in", amp.Float(optional=True)),
    ]


class Cancel(CompassCommand):
    """Withdraw a waiting request: one's own, or anyone's for an admin."""

    commandName = b"cancel"
    arguments = [(b"request", amp.Unicode())]
    response = []


class Release(CompassCommand):
    """Give a lease back before its deadline; the device is free again at once."""

    commandName = b"release"
    arguments = [(b"lease", amp.Unicode())]
    response = []


class Drain(CompassCommand):
    """Admin: let the device finish its current lease, then grant it no more."""

    commandName = b"drain"
    arguments = [(b"device", amp.Unicode())]
    response = []


class Undrain(CompassCommand):
    """Admin: put a drained device back into service."""

    commandName = b"undrain"
    arguments = [(b"device", amp.Unicode())]
    response = []


class Kick(CompassCommand):
    """Admin: end a lease now; its holder is told it was kicked."""

    commandName = b"kick"
    arguments = [(b"lease", amp.Unicode()), (b"reason", amp.Unicode(optional=True))]
    response = []


DEVICE_ROW = [
    (b"name", amp.Unicode()),
    (b"key", amp.Unicode()),
    (b"address", amp.Unicode()),
    (b"state", amp.Unicode()),
    (b"health", amp.Unicode()),
    (b"holder", amp.Unicode(optional=True)),
    (b"lease", amp.Unicode(optional=True)),
    (b"held_for", amp.Float(optional=True)),
    (b"lease_left", amp.Float(optional=True)),
    (b"tags", amp.ListOf(amp.Unicode())),
    (b"info", amp.ListOf(amp.Unicode())),
]
"""One device in a listing; C{info} is a flat list of C{name=value} strings."""

QUEUE_ROW = [
    (b"key", amp.Unicode()),
    (b"free", amp.Integer()),
    (b"total", amp.Integer()),
    (b"waiting", amp.Integer()),
]

WAITING_ROW = [
    (b"request", amp.Unicode()),
    (b"key", amp.Unicode()),
    (b"user", amp.Unicode()),
    (b"priority", amp.Integer()),
    (b"position", amp.Integer()),
    (b"waited", amp.Float()),
    (b"tags", amp.ListOf(amp.Unicode())),
    (b"why", amp.Unicode(optional=True)),
]


class ListDevices(CompassCommand):
    """One page of devices, ordered by key then name, starting after C{after}.

    C{more} says whether another page follows; pass the last name seen as C{after}.
    """

    commandName = b"list-devices"
    arguments = [
        (b"after", amp.Unicode(optional=True)),
        (b"limit", amp.Integer(optional=True)),
    ]
    response = [(b"devices", amp.AmpList(DEVICE_ROW)), (b"more", amp.Boolean())]


class ListQueues(CompassCommand):
    """Every key with its device counts and queue length (one row per key, paged)."""

    commandName = b"list-queues"
    arguments = [
        (b"after", amp.Unicode(optional=True)),
        (b"limit", amp.Integer(optional=True)),
    ]
    response = [(b"queues", amp.AmpList(QUEUE_ROW)), (b"more", amp.Boolean())]


class ListWaiting(CompassCommand):
    """One page of the waiting requests of C{key} in queue order, from position C{start}."""

    commandName = b"list-waiting"
    arguments = [
        (b"key", amp.Unicode()),
        (b"start", amp.Integer(optional=True)),
        (b"limit", amp.Integer(optional=True)),
    ]
    response = [(b"waiting", amp.AmpList(WAITING_ROW)), (b"more", amp.Boolean())]


# --- tracker -> client ---------------------------------------------------------------


class Position(CompassCommand):
    """A waiting request's place in its queue changed (0 is next); C{why} says why it is
    there ("behind bob: priority 5 > 1")."""

    commandName = b"position"
    arguments = [
        (b"request", amp.Unicode()),
        (b"position", amp.Integer()),
        (b"why", amp.Unicode(optional=True)),
    ]
    requiresAnswer = False


class Granted(CompassCommand):
    """A request was granted: connect to C{address} with C{ticket} within the lease.

    C{expires_in} is in seconds from when the tracker sent this, so clocks need not agree.
    """

    commandName = b"granted"
    arguments = [
        (b"request", amp.Unicode()),
        (b"lease", amp.Unicode()),
        (b"ticket", amp.Unicode()),
        (b"device", amp.Unicode()),
        (b"address", amp.Unicode()),
        (b"expires_in", amp.Float()),
        (b"info", amp.ListOf(amp.Unicode())),
    ]
    requiresAnswer = False


class RequestEnded(CompassCommand):
    """A request ended without a grant: C{reason} is one of
    L{compassd.tracker.records.RequestOutcome}'s values; C{message} says it for people."""

    commandName = b"request-ended"
    arguments = [
        (b"request", amp.Unicode()),
        (b"reason", amp.Unicode()),
        (b"message", amp.Unicode()),
        (b"position", amp.Integer(optional=True)),
        (b"waited", amp.Float(optional=True)),
    ]
    requiresAnswer = False


class LeaseEnded(CompassCommand):
    """A lease ended: C{reason} is one of L{compassd.tracker.records.LeaseOutcome}'s values."""

    commandName = b"lease-ended"
    arguments = [
        (b"lease", amp.Unicode()),
        (b"reason", amp.Unicode()),
        (b"message", amp.Unicode()),
    ]
    requiresAnswer = False
