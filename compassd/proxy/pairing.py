"""Which boards the proxy fronts, and which client waits for which board's data connection.

A plain object with no reactor and no sockets: the proxy's connections call it, and the
tests drive it directly. Boards are known by device name (the name they registered with
the tracker through the proxy); a channel is the secret the proxy gives a board when it
asks it to connect back for one client.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from ..protocol.errors import BadRequest, LimitExceeded, NoSuchDevice, Unavailable

B = TypeVar("B")
"""What stands for a board's control connection."""
W = TypeVar("W")
"""What stands for a client waiting for its board."""


def _new_channel() -> str:
    return secrets.token_hex(16)


@attrs.define
class Channel(Generic[B, W]):
    """A client waiting for C{board} to connect back: C{deadline} is when it gives up."""

    ident: str
    device: str
    board: B
    waiter: W
    deadline: float


@attrs.define
class Pairing(Generic[B, W]):
    """The boards behind the proxy and the channels opened to them."""

    max_pending: int = 64
    """How many clients may wait for the same board's data connection at once."""
    new_channel: Callable[[], str] = _new_channel
    _devices: dict[str, B] = attrs.Factory(dict)
    _channels: dict[str, Channel[B, W]] = attrs.Factory(dict)

    # --- boards ------------------------------------------------------------------------

    def add_device(self, device: str, board: B) -> None:
        """C{board} registered C{device} (the tracker accepted it)."""
        self._devices[device] = board

    def remove_device(self, device: str, board: B) -> None:
        if self._devices.get(device) is board:
            del self._devices[device]

    def board_gone(self, board: B) -> list[Channel[B, W]]:
        """C{board}'s control connection closed: forget its devices; return the channels
        still waiting for it (their clients must be told)."""
        for device in [d for d, b in self._devices.items() if b is board]:
            del self._devices[device]
        gone = [c for c in self._channels.values() if c.board is board]
        for channel in gone:
            del self._channels[channel.ident]
        return gone

    def devices(self) -> list[str]:
        return sorted(self._devices)

    def board_for(self, device: str | None) -> B:
        """The board serving C{device}, or the sentence saying why there is none."""
        if not device:
            raise BadRequest(
                "This address is a compass-proxy: open-session must name the device the"
                " tracker granted (its device argument). Upgrade the client.")
        board = self._devices.get(device)
        if board is None:
            raise NoSuchDevice(
                f"No board named {device} is connected to this proxy right now; it may"
                " have just gone offline. Request a device from the tracker again.")
        return board

    # --- channels ----------------------------------------------------------------------

    def open_channel(self, device: str | None, waiter: W, now: float,
                     timeout: float) -> Channel[B, W]:
        """A client wants a session on C{device}: the channel its board must attach to."""
        board = self.board_for(device)
        assert device is not None
        waiting = sum(1 for c in self._channels.values() if c.board is board)
        if waiting >= self.max_pending:
            raise LimitExceeded(
                f"{waiting} clients are already waiting for board {device} to connect"
                " back to the proxy; try again shortly.")
        channel = Channel(self.new_channel(), device, board, waiter, now + timeout)
        self._channels[channel.ident] = channel
        return channel

    def attach(self, ident: str) -> Channel[B, W]:
        """A data connection named channel C{ident}: the channel it completes."""
        channel = self._channels.pop(ident, None)
        if channel is None:
            raise BadRequest(
                "No client is waiting on that channel: it was never opened, was already"
                " used, or its client gave up.")
        return channel

    def cancel(self, ident: str) -> Channel[B, W] | None:
        """Forget channel C{ident} (its client went away or gave up)."""
        return self._channels.pop(ident, None)

    def expired(self, now: float) -> list[Channel[B, W]]:
        """Remove and return the channels whose board did not connect back in time."""
        late = [c for c in self._channels.values() if c.deadline <= now]
        for channel in late:
            del self._channels[channel.ident]
        return late

    def pending(self) -> int:
        return len(self._channels)


def too_late(device: str, timeout: float) -> Unavailable:
    """The error for a client whose board did not connect back in time."""
    return Unavailable(
        f"The board {device} did not connect back to the proxy within {timeout:g} s;"
        " it may be overloaded or its network down. Request the device again later.")
