"""The base of every compassd AMP command, and the hello exchange that opens a connection."""

from __future__ import annotations

from twisted.protocols import amp

from .errors import ALL_ERRORS

PROTOCOL_VERSION = 2
"""The newest protocol version this code speaks."""

SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2)
"""Every version this code can speak; the hello picks the highest one both peers share."""

REDIRECT_VERSION = 2
"""The first version whose callers understand a standby tracker's redirect: a hello
answer with C{active} (the address of the active tracker) that does not greet. A caller
that offers only older versions gets C{UNAVAILABLE} with a sentence instead."""


class CompassCommand(amp.Command):
    """A compassd command: its C{commandName} is fixed and it declares the common errors.

    Every command declares every error class with its code, so any error a responder
    raises reaches the caller as that class without closing the connection. Declaring
    all of them on the base keeps the wire stable when a responder learns a new refusal.
    """

    errors = {error: error.code for error in ALL_ERRORS}

    announces_run = False
    """Whether raw bytes follow this command's box (an upload, a run's inputs): when its
    arguments cannot be read, the receiver cannot know where the bytes end, so it answers
    and closes the connection instead of reading them as boxes."""


class Hello(CompassCommand):
    """The first command on every connection: pick a version and say who is calling.

    The caller lists the versions it speaks; the answer names the one chosen (the
    highest both share). C{token} is a bearer token; without one the caller is anonymous
    and C{user} is only a name it asserts, which a tracker accepts only when configured
    to allow anonymous use.

    C{active} (version 2): the answer of a standby tracker, which serves nobody; it
    names the active tracker's C{HOST:PORT} ("" while the standby does not know it),
    the connection is not greeted and the standby closes it.
    """

    commandName = b"hello"
    arguments = [
        (b"versions", amp.ListOf(amp.Integer())),
        (b"role", amp.Unicode()),
        (b"token", amp.Unicode(optional=True)),
        (b"user", amp.Unicode(optional=True)),
        (b"software", amp.Unicode(optional=True)),
    ]
    response = [
        (b"version", amp.Integer()),
        (b"user", amp.Unicode()),
        (b"roles", amp.ListOf(amp.Unicode())),
        (b"software", amp.Unicode()),
        (b"features", amp.ListOf(amp.Unicode(), optional=True)),
        (b"active", amp.Unicode(optional=True)),
    ]


ROLES = ("client", "board", "admin")
"""What a connection may say it is in its hello."""



def choose_version(offered: list[int]) -> int | None:
    """Return the highest version in both C{offered} and ours, or None if none is shared."""
    shared = set(offered) & set(SUPPORTED_VERSIONS)
    return max(shared) if shared else None
