"""Accounting: where the board time went. A client asks the tracker for a usage report
(L{Usage}, like Slurm's ``sshare`` and ``sreport``) and for the history of leases and
unserved requests (L{History}, like ``sacct``); an admin resets fair share's memory of a
user (L{ResetUsage}).

These commands came after protocol version 1 without a version bump: a tracker that
answers them lists L{FEATURE_REPORTS} in the C{features} of its hello answer, and a
client asks only such a tracker (an older one would answer C{UNHANDLED}).

Times in a history row are the tracker's clock (Unix seconds); the answer's C{now} is
the same clock at the answer, so a client shows them as "ago" whatever its own clock
says. C{since} is always seconds back from the tracker's now.
"""

from __future__ import annotations

from twisted.protocols import amp

from ._command import CompassCommand

FEATURE_REPORTS = "reports-1"
"""In the hello answer's C{features}: the tracker answers L{Usage}, L{ResetUsage} and
L{History}."""

HISTORY_PAGE = 50
"""History rows per answer at most: a row's detail may be a long sentence, and one AMP
value holds 64 KiB."""

USAGE_PAGE = 100
"""Usage rows per answer at most."""

GROUPINGS = ("user", "account", "key", "device")
"""What a usage report's rows may stand for (L{Usage}'s C{by})."""

USAGE_ROW = [
    (b"name", amp.Unicode()),
    (b"key", amp.Unicode()),
    (b"leases", amp.Integer()),
    (b"hours", amp.Float()),
    (b"unserved", amp.Integer()),
    (b"wait_p50", amp.Float(optional=True)),
    (b"wait_p95", amp.Float(optional=True)),
    (b"share", amp.Float(optional=True)),
    (b"decayed", amp.Float(optional=True)),
    (b"order", amp.Integer(optional=True)),
    (b"of", amp.Integer(optional=True)),
]
"""One row of a usage report: C{name} is the user, account, key or device; C{key} the
device key (for a row by key, the key again). C{leases} and C{hours}: leases held and
board-hours used inside the window; C{unserved}: requests that ended there without a
grant; C{wait_p50}, C{wait_p95}: seconds the granted requests waited (absent without
grants). For users and accounts with fair share on: C{share}, C{decayed} (board-hours,
decayed with the half-life) and C{order}, their place in C{of} (1 goes first at one
priority)."""

HISTORY_ROW = [
    (b"id", amp.Unicode()),
    (b"kind", amp.Unicode()),
    (b"user", amp.Unicode()),
    (b"key", amp.Unicode()),
    (b"device", amp.Unicode(optional=True)),
    (b"request", amp.Unicode(optional=True)),
    (b"priority", amp.Integer()),
    (b"requested_at", amp.Float()),
    (b"granted_at", amp.Float(optional=True)),
    (b"ended_at", amp.Float()),
    (b"outcome", amp.Unicode()),
    (b"detail", amp.Unicode()),
]
"""One ended lease (C{kind} ``lease``, with C{device} and C{granted_at}) or one request
that ended without a grant (C{kind} ``request``); C{outcome} is how it ended."""


class Usage(CompassCommand):
    """A usage report of the last C{since} seconds (default a week), grouped C{by} user
    (default), account, key or device; only C{key}'s rows when given, only C{user}'s
    when given. A user who is not an admin gets only their own rows (another C{user} is
    refused), with their place among everyone. One page of rows from C{start}.

    The answer's C{half_life} is the tracker's fair-share half-life in seconds (0: users
    take turns, no decayed usage is kept); C{history} says where the window's numbers
    came from (``memory since HH:MM`` or ``store``)."""

    commandName = b"usage"
    arguments = [
        (b"key", amp.Unicode(optional=True)),
        (b"user", amp.Unicode(optional=True)),
        (b"by", amp.Unicode(optional=True)),
        (b"since", amp.Float(optional=True)),
        (b"start", amp.Integer(optional=True)),
        (b"limit", amp.Integer(optional=True)),
    ]
    response = [
        (b"rows", amp.AmpList(USAGE_ROW)),
        (b"more", amp.Boolean()),
        (b"half_life", amp.Float()),
        (b"since", amp.Float()),
        (b"history", amp.Unicode()),
    ]


class ResetUsage(CompassCommand):
    """Admin: forget C{user}'s decayed usage of every key (everyone's without C{user}),
    so their standing in fair share starts from nothing. Audited. The answer names the
    keys where there was usage to forget."""

    commandName = b"reset-usage"
    arguments = [(b"user", amp.Unicode(optional=True))]
    response = [(b"keys", amp.ListOf(amp.Unicode()))]


class History(CompassCommand):
    """One page of history, newest first: leases that ended and requests that ended
    without a grant, in the last C{since} seconds (default all the tracker has),
    filtered by C{user}, C{device} and C{key}. A user who is not an admin sees only
    their own rows. C{before_at} and C{before_id}: the C{ended_at} and C{id} of the
    last row of the previous page."""

    commandName = b"history"
    arguments = [
        (b"user", amp.Unicode(optional=True)),
        (b"device", amp.Unicode(optional=True)),
        (b"key", amp.Unicode(optional=True)),
        (b"since", amp.Float(optional=True)),
        (b"before_at", amp.Float(optional=True)),
        (b"before_id", amp.Unicode(optional=True)),
        (b"limit", amp.Integer(optional=True)),
    ]
    response = [
        (b"rows", amp.AmpList(HISTORY_ROW)),
        (b"more", amp.Boolean()),
        (b"now", amp.Float()),
        (b"history", amp.Unicode()),
    ]
