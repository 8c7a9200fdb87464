"""Addresses as people write them: C{HOST:PORT}, C{[v6]:PORT}, a bare host, or a Twisted
client endpoint string.

The client library, the CLI and the daemons' options all read addresses here, so that
C{--tracker}, C{--advertise}, C{--proxy}, C{COMPASS_TRACKER} and a lease's board address
follow one grammar and refuse bad text with the same sentences. Nothing here opens a
socket or needs a reactor; L{advertised_address} alone asks for this machine's name, and
only when the bound address is a wildcard.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

DEFAULT_PORT = 9190
"""The tracker's port, taken when an address names only a host."""

WILDCARDS = ("0.0.0.0", "::", "")
"""Bound addresses that mean every interface, and so no address a peer can dial."""


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split C{host:port}, C{[v6]:port} or a bare host; raise ValueError saying why.

    A bare IPv6 address (more than one colon, no brackets) is a host without a port.
    """
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} opens [ but does not close it.")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} has something other than :PORT after ].")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    if not host or not 0 < port < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT.")
    return host, port


def format_address(host: str, port: int) -> str:
    """C{host:port}, with an IPv6 host in brackets: what L{parse_address} reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


CLIENT_ENDPOINT_TYPES = ("tcp", "ssl", "tls", "unix")
"""The client endpoint types compassd's addresses may name (Twisted's own, and C{tls:}
with compassd's C{ca=} fields)."""


def client_endpoint(text: str, default_port: int = DEFAULT_PORT) -> str:
    """A Twisted client endpoint string for C{text}.

    C{HOST:PORT}, C{[v6]:PORT} or a bare host becomes C{tcp:host=HOST:port=PORT}. An
    endpoint string (C{tcp:}, C{ssl:}, C{tls:} or C{unix:}, with positional arguments
    such as C{tcp:HOST:PORT} or keyword ones such as C{tcp:host=HOST:port=PORT}, and
    compassd's C{tls:host=H:port=P:ca=FILE}) is returned as it is once it has been
    parsed the way it will be used. Anything else is a ValueError saying why.
    """
    kind, sep, _ = text.partition(":")
    if sep and kind.lower() in CLIENT_ENDPOINT_TYPES:
        check_client_endpoint(text)
        return text
    host, port = parse_address(text, default_port)
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"


def check_client_endpoint(text: str) -> None:
    """Parse the endpoint string C{text} as a connection would (no connection is made);
    ValueError with Twisted's reason if it cannot work."""
    from twisted.internet.testing import MemoryReactorClock

    from .tls import client_from_string

    try:
        client_from_string(MemoryReactorClock(), text)
    except Exception as e:  # Twisted's parsers raise ValueError, TypeError, OSError...
        reason = str(e) or type(e).__name__
        raise ValueError(f"{text!r} is not a client endpoint string that can work:"
                         f" {reason.rstrip('.')}.") from None


def endpoint_arguments(text: str) -> tuple[list[str], dict[str, str]]:
    """The positional and keyword arguments of the endpoint string C{text} after its
    type, split at unescaped colons, with C{\\:} unescaped."""
    _, _, rest = text.partition(":")
    parts, current, escaped = [], "", False
    for char in rest:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    args = [p for p in parts if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts if "=" in p)
    return args, kwargs


def dial_address(text: str) -> str:
    """The C{HOST:PORT} that peers dial, from C{HOST:PORT}, C{[v6]:PORT}, C{tcp:HOST:PORT}
    or C{tcp:host=HOST:port=PORT} (a board's or a proxy's C{--advertise}); ValueError
    saying why for anything else, such as a C{unix:} endpoint no other machine can dial."""
    kind, sep, _ = text.partition(":")
    if not (sep and kind.lower() in CLIENT_ENDPOINT_TYPES):
        return format_address(*parse_address(text, 0))
    if kind.lower() != "tcp":
        raise ValueError(f"{text!r} is a {kind}: endpoint, but clients dial this address"
                         " over TCP: give HOST:PORT.")
    args, kwargs = endpoint_arguments(text)
    host = kwargs.get("host", args[0] if args else "")
    port = kwargs.get("port", args[1] if len(args) > 1 else "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} does not name a host and a port.")
    return format_address(host, int(port))


def advertised_address(host: str, port: int) -> str:
    """The C{HOST:PORT} peers should dial for a port bound to C{host}: a wildcard
    address is replaced by this machine's fully qualified name."""
    if host in WILDCARDS:
        host = socket.getfqdn()
    return format_address(host, port)


def split_trackers(text: str) -> list[str]:
    """The trackers in C{text}: one address, or several separated by commas
    (C{a:9190,b:9190}, what C{--tracker} and C{COMPASS_TRACKER} take for a standby
    pair); ValueError saying why for an empty list or an empty item."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(parts):
        raise ValueError(f"{text!r} is not a tracker address or a comma-separated list of"
                         " them (e.g. a.example:9190,b.example:9190).")
    return parts


def same_tracker(address: str, candidate: str) -> bool:
    """Whether C{candidate} (C{HOST:PORT} or a C{tcp:}/C{tls:}/C{ssl:} endpoint string)
    dials the C{HOST:PORT} a standby named as the active tracker."""
    try:
        wanted = format_address(*parse_address(address, 0))
    except ValueError:
        return False
    kind, sep, _ = candidate.partition(":")
    if sep and kind.lower() in ("ssl", "tls"):
        args, kwargs = endpoint_arguments(candidate)
        host = kwargs.get("host", args[0] if args else "")
        port = kwargs.get("port", args[1] if len(args) > 1 else "")
        return port.isdigit() and format_address(host, int(port)) == wanted
    try:
        return dial_address(candidate) == wanted
    except ValueError:
        return False


class TrackerRing:
    """Which of several trackers to dial next: what a client or a board does when it
    was given a standby pair (or more). Pure: it opens nothing and knows no clock.

    L{next} goes round the addresses, the one after the last that answered
    (L{answered}) first; a standby's redirect (L{redirected}) makes the active tracker it
    named the next one dialled, if it is one of the addresses (or, with C{follow}, any
    other address: a client given only the standby follows it to the active one).
    """

    def __init__(self, addresses: list[str] | tuple[str, ...],
                 follow: Callable[[str], str | None] | None = None) -> None:
        if not addresses:
            raise ValueError("A tracker ring needs at least one address.")
        self.addresses = tuple(addresses)
        self._follow = follow
        self._next = 0
        self._redirect: str | None = None

    @property
    def several(self) -> bool:
        return len(self.addresses) > 1

    def next(self) -> str:
        """The address to dial now."""
        if self._redirect is not None:
            target, self._redirect = self._redirect, None
            return target
        address = self.addresses[self._next % len(self.addresses)]
        self._next = (self._next + 1) % len(self.addresses)
        return address

    def answered(self, address: str) -> None:
        """C{address} answered as the active tracker: when it is lost, the others are
        dialled first (a standby is taking over), then it again."""
        if address in self.addresses:
            self._next = (self.addresses.index(address) + 1) % len(self.addresses)

    def redirected(self, active: str) -> str | None:
        """A standby said the active tracker is C{active} (C{HOST:PORT}); the address
        that will be dialled next for it, or None when it cannot be followed (an
        empty or unreadable address: the ring goes on round its addresses)."""
        if not active:
            return None
        for candidate in self.addresses:
            if same_tracker(active, candidate):
                self._redirect = candidate
                return candidate
        target = self._follow(active) if self._follow is not None else None
        self._redirect = target
        return target
