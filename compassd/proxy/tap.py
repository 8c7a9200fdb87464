"""``twistd compass-proxy``: its options and how they become a running service."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from ..daemon_options import check_tracker_and_advertise, positive
from ..listening import Listener
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
         "How long a connection may stay silent before it says what it is.", positive],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this Twisted endpoint, e.g."
         " tcp:9292:interface=127.0.0.1 (off unless given; see docs/monitoring.md)."],
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
        listener = Listener(reactor, "compass-proxy", endpoint, proxy.factory())
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
