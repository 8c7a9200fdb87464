"""``twistd compass-proxy``: its options and how they become a running service."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from ..daemon_options import check_tracker_and_advertise, positive
from ..listening import Listener
from ..protocol.limits import (
    HELLO_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_UNAUTHENTICATED,
    ConnectionGuard,
)
from ..systemd import SystemdNotifier, plural


class Options(usage.Options):
    synopsis = "--tracker ENDPOINT [--listen ENDPOINT] [--advertise HOST:PORT]"
    longdesc = (
        "Run compass-proxy: boards that cannot accept connections (behind NAT or a"
        " firewall) run compass-server --proxy ENDPOINT and keep a connection to this"
        " proxy; the proxy registers their devices with the tracker under its own"
        " address, and when a client granted such a device connects here with its"
        " ticket, asks the board to connect back and relays the session's bytes both"
        " ways with backpressure. Durations are in seconds."
    )

    optParameters = [
        ["tracker", "t", "127.0.0.1:9190",
         "The tracker: HOST:PORT or a Twisted client endpoint string"
         " (tcp:host=H:port=P, tls:...)."],
        ["advertise", None, None,
         "HOST:PORT clients should connect to for the boards behind this proxy (default:"
         " this host's name and the port of the first --listen)."],
        ["dial-timeout", None, 10.0,
         "How long a client waits for its board to connect back.", positive],
        ["idle-timeout", None, 60.0,
         "How long a connection may go without a whole box before it says what it is.",
         positive],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this Twisted endpoint, e.g."
         " tcp:9292:interface=127.0.0.1 (off unless given; see docs/monitoring.md)."],
        ["max-connections-per-address", None, str(MAX_CONNECTIONS_PER_ADDRESS),
         "Connections one IP address may have open at once before they say hello ('0'"
         " for no limit)."],
        ["max-unauthenticated", None, str(MAX_UNAUTHENTICATED),
         "Connections from all addresses together that may wait for hello at once; past"
         " it the oldest from the busiest address is closed ('0' for no limit)."],
        ["hello-timeout", None, str(HELLO_TIMEOUT),
         "A connection that has not said hello within this time of connecting is closed"
         " ('0' for never)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen for boards and clients on this Twisted endpoint (repeatable; default
        tcp:9090), e.g. tcp:9090:interface=192.0.2.7, ssl:9090:..., systemd:...."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = ["tcp:9090"]
        check_tracker_and_advertise(self)
        try:
            count = int(self["max-connections-per-address"])
            waiting = int(self["max-unauthenticated"])
            hello = float(self["hello-timeout"])
            if count < 0 or waiting < 0 or hello < 0:
                raise ValueError("it is negative")
        except ValueError as e:
            raise usage.UsageError(
                "--max-connections-per-address, --max-unauthenticated and --hello-timeout"
                f" take a number: {e}.") from e
        self["max-connections-per-address"] = count or None
        self["max-unauthenticated"] = waiting or None
        self["hello-timeout"] = hello or None


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from .service import ProxyService

    top = service.MultiService()
    proxy = ProxyService(reactor, options["tracker-endpoint"], options["advertise"],
                         dial_timeout=float(options["dial-timeout"]),
                         idle_timeout=float(options["idle-timeout"]))
    proxy.setServiceParent(top)
    listeners = []
    for endpoint in options["listen"]:
        guarded = ConnectionGuard(proxy.factory(), reactor, what="proxy",
                                  per_address=options["max-connections-per-address"],
                                  hello_timeout=options["hello-timeout"],
                                  unauthenticated=options["max-unauthenticated"])
        listener = Listener(reactor, "compass-proxy", endpoint, guarded)
        listener.ready.addCallback(proxy.listening)
        listener.setServiceParent(top)
        listeners.append(listener)
    if options["metrics"]:
        from ..metrics import metrics_listener
        from .metrics import ProxyMetrics

        proxy.metrics = ProxyMetrics(channels=proxy.open_channels,
                                     boards=lambda: len(proxy.pairing.devices()))
        metrics_listener(reactor, "compass-proxy", options["metrics"],
                         proxy.metrics.registry).setServiceParent(top)
    SystemdNotifier(
        reactor,
        is_ready=lambda: all(listener.port is not None for listener in listeners),
        status=lambda: f"{plural(len(proxy.connections), 'connection')} open",
    ).setServiceParent(top)
    return top
