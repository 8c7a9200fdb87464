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

DEFAULT_PORT = 9190
"""The tracker's port, taken when an address names only a host."""

ENDPOINT_PREFIXES = ("tcp:", "ssl:", "tls:", "unix:")
"""How a Twisted client endpoint string starts; such text is passed on as it is."""

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


def client_endpoint(text: str, default_port: int = DEFAULT_PORT) -> str:
    """A Twisted client endpoint string from C{HOST:PORT} or an endpoint string (which
    is returned as it is); ValueError saying why for anything else."""
    if text.startswith(ENDPOINT_PREFIXES) and "=" in text:
        return text
    host, port = parse_address(text, default_port)
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"


def advertised_address(host: str, port: int) -> str:
    """The C{HOST:PORT} peers should dial for a port bound to C{host}: a wildcard
    address is replaced by this machine's fully qualified name."""
    if host in WILDCARDS:
        host = socket.getfqdn()
    return format_address(host, port)
