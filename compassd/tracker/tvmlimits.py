"""What TVM's unauthenticated tracker protocol may hold on compass-tracker, and the count.

TVM peers cannot prove who they are, so everything they can make the tracker keep is
counted by the peer's IP address and in total, and refused past a cap: open TVM
connections (each holds at most one frame of 64 KiB), devices registered with PUT, and
requests waiting. Refusals are sentences the shell sends back (C{[-1, sentence]}) or
logs once per connection. Devices count against the address that registered them until
the tracker forgets them (L{TvmLimits.forget_offline} seconds after their connection
closed, unless their server came back).

No Twisted and no clock here: the shell (L{compassd.tracker.tvm}) says what opened,
registered, waited and ended, and asks before it adds anything.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

MIN_PRIORITY = -1_000_000
MAX_PRIORITY = 1_000_000
"""The priorities a request may ask for, compassd's and TVM's alike."""


@attrs.frozen
class TvmLimits:
    """The caps (None: no cap). compass-tracker's --tvm-* options fill them in."""

    connections_per_address: int | None = 128
    connections: int | None = 1024
    devices_per_address: int | None = 64
    devices: int | None = 1024
    requests_per_address: int | None = 256
    requests: int | None = 4096
    forget_offline: float | None = 300.0
    """Seconds an offline TVM device is kept (a compassd board's is --forget-offline)."""
    min_priority: int = MIN_PRIORITY
    max_priority: int = MAX_PRIORITY


def _over(limit: int | None, count: int) -> bool:
    return limit is not None and count >= limit


@attrs.define
class TvmLedger:
    """The counts, by peer address, of what TVM peers hold."""

    limits: TvmLimits = attrs.Factory(TvmLimits)
    _connections: dict[str, int] = attrs.Factory(dict)
    _devices: dict[str, str] = attrs.Factory(dict)
    """Device name -> the address that registered it."""
    _by_address: dict[str, set[str]] = attrs.Factory(dict)
    _requests: dict[str, int] = attrs.Factory(dict)
    _requests_total: int = 0
    _connections_total: int = 0

    # --- connections ----------------------------------------------------------------

    def connection_refusal(self, host: str) -> str | None:
        """Why a new TVM connection from C{host} is refused, or None if it is taken."""
        limits = self.limits
        here = self._connections.get(host, 0)
        if _over(limits.connections_per_address, here):
            return (f"{host} already has {here} TVM connections open to this tracker, the"
                    " most one address may have; close some, or raise"
                    " --tvm-max-connections-per-address.")
        if _over(limits.connections, self._connections_total):
            return (f"This tracker already has {self._connections_total} TVM connections"
                    " open, the most it allows; try again later, or raise"
                    " --tvm-max-connections.")
        return None

    def connection_opened(self, host: str) -> None:
        self._connections[host] = self._connections.get(host, 0) + 1
        self._connections_total += 1

    def connection_closed(self, host: str) -> None:
        left = self._connections.get(host, 0) - 1
        if left > 0:
            self._connections[host] = left
        else:
            self._connections.pop(host, None)
        self._connections_total = max(0, self._connections_total - 1)

    def connection_count(self, host: str | None = None) -> int:
        return self._connections_total if host is None else self._connections.get(host, 0)

    # --- devices --------------------------------------------------------------------

    def device_refusal(self, host: str, name: str,
                       held: Callable[[str, str], bool]) -> str | None:
        """Why C{host} may not register the device C{name}, or None if it may.

        C{held(name, address)} says whether a counted device is still in the tracker on
        behalf of that address; those that are not stop counting here first.
        """
        if self._devices.get(name) == host:
            return None
        limits = self.limits
        mine = self._prune(host, held)
        if _over(limits.devices_per_address, mine):
            return (f"{host} already registered {mine} TVM devices, the most one address"
                    f" may; stop some TVM servers ({_forgotten(limits.forget_offline)}),"
                    " or raise --tvm-max-devices-per-address.")
        if _over(limits.devices, len(self._devices)):
            for address in list(self._by_address):
                self._prune(address, held)
        if _over(limits.devices, len(self._devices)):
            return (f"This tracker already has {len(self._devices)} TVM devices, the most"
                    " it allows; try again once others are forgotten, or raise"
                    " --tvm-max-devices.")
        return None

    def device_added(self, host: str, name: str) -> None:
        previous = self._devices.get(name)
        if previous == host:
            return
        if previous is not None:
            self._forget(name, previous)
        self._devices[name] = host
        self._by_address.setdefault(host, set()).add(name)

    def device_count(self, host: str | None = None) -> int:
        if host is None:
            return len(self._devices)
        return len(self._by_address.get(host, ()))

    def _prune(self, host: str, held: Callable[[str, str], bool]) -> int:
        names = self._by_address.get(host, set())
        for name in [n for n in names if not held(n, host)]:
            self._forget(name, host)
        return len(self._by_address.get(host, ()))

    def _forget(self, name: str, host: str) -> None:
        self._devices.pop(name, None)
        names = self._by_address.get(host)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_address[host]

    # --- requests -------------------------------------------------------------------

    def request_refusal(self, host: str, priority: int) -> str | None:
        """Why a TVM request of C{priority} from C{host} is refused, or None."""
        limits = self.limits
        if not limits.min_priority <= priority <= limits.max_priority:
            shown = str(priority) if len(str(priority)) <= 24 else "a huge number"
            return (f"Priority {shown} is out of range ({limits.min_priority} to"
                    f" {limits.max_priority}); ask with a priority in it.")
        here = self._requests.get(host, 0)
        if _over(limits.requests_per_address, here):
            return (f"{host} already has {here} TVM requests waiting, the most one address"
                    " may; wait for a grant, or raise --tvm-max-requests-per-address.")
        if _over(limits.requests, self._requests_total):
            return (f"This tracker already has {self._requests_total} TVM requests"
                    " waiting, the most it allows; try again later.")
        return None

    def request_added(self, host: str) -> None:
        self._requests[host] = self._requests.get(host, 0) + 1
        self._requests_total += 1

    def request_gone(self, host: str, count: int = 1) -> None:
        left = self._requests.get(host, 0) - count
        if left > 0:
            self._requests[host] = left
        else:
            self._requests.pop(host, None)
        self._requests_total = max(0, self._requests_total - count)

    def request_count(self, host: str | None = None) -> int:
        return self._requests_total if host is None else self._requests.get(host, 0)


def _forgotten(seconds: float | None) -> str:
    if seconds is None:
        return "their devices are forgotten after --forget-offline"
    return f"their devices are forgotten {seconds:g} s after they disconnect"
