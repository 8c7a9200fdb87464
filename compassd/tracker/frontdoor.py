"""One port for two protocols: AMP for compassd peers, TVM's tracker protocol for TVM's.

TVM peers open with 4 magic bytes (C{71 f2 02 00}) that can never begin an AMP box (an AMP
box starts with a 2-byte key length of at most 255), so the first bytes decide which
protocol serves the connection. Peers whose address is not allowed for TVM get AMP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from ..protocol.tvm_tracker import TRACKER_MAGIC

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Sequence[str]) -> list[Network]:
    """C{10.0.0.0/8}, C{127.0.0.1} or C{::1} into networks; ValueError names a bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an address or network") from None
    return networks


def address_allowed(host: str, networks: Sequence[Network]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class FrontDoor(Protocol):
    """Reads the first bytes, then hands the connection to the protocol they call for."""

    def __init__(self, make_amp: Callable[[], IProtocol], make_tvm: Callable[[], IProtocol] | None,
                 tvm_allowed: Callable[[str], bool]) -> None:
        self.make_amp = make_amp
        self.make_tvm = make_tvm
        self.tvm_allowed = tvm_allowed
        self.inner: Any = None
        self._buffer = b""

    @property
    def greeted(self) -> bool:
        """Whether the peer has said hello (AMP) or TVM's magic: until then the
        connection counts against the limits on connections that have not."""
        return self.inner is not None and bool(getattr(self.inner, "greeted", True))

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        if len(self._buffer) < 4 and TRACKER_MAGIC.startswith(self._buffer):
            return
        peer = getattr(self.transport.getPeer(), "host", "")  # type: ignore[union-attr]
        if (self._buffer[:4] == TRACKER_MAGIC and self.make_tvm is not None
                and self.tvm_allowed(peer)):
            self.inner = self.make_tvm()
        else:
            self.inner = self.make_amp()
        self.inner.makeConnection(self.transport)
        data, self._buffer = self._buffer, b""
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


def front_door_factory(make_amp: Callable[[], IProtocol],
                       make_tvm: Callable[[], IProtocol] | None,
                       tvm_networks: Sequence[Network] = ()) -> Factory:
    return Factory.forProtocol(
        lambda: FrontDoor(make_amp, make_tvm, lambda host: address_allowed(host, tvm_networks))
    )
