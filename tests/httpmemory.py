"""Drive a twisted.web L{Site} over an in-memory transport: real HTTP parsing, no socket."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


class Exchange:
    """One HTTP connection to C{site}: send a request, read what came back so far."""

    def __init__(self, site: Any) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = site.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080",
                 f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def received(self) -> bytes:
        return bytes(self.transport.value())

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def request(site: Any, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One complete request: (status, headers with lower-case names, body)."""
    exchange = Exchange(site)
    exchange.send(method, path, headers, body)
    raw = exchange.received()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), value.strip())
    if found.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    exchange.close()
    return int(status_line.split()[1]), found, payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
