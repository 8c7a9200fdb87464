"""``twistd compass-proxy``: its options and how they become a running service."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from ..access import Access, TokensFileError, load_tokens
from ..daemon_options import check_tracker_and_advertise, positive
from ..hangup import ReloadOnHangup
from ..listening import (
    Listener,
    bound_scope,
    cleartext_host,
    describe_address,
    endpoint_scope,
    server_cleartext,
    warn_cleartext,
)
from ..protocol.limits import (
    HELLO_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_UNAUTHENTICATED,
    ConnectionGuard,
)
from ..ratelimit import DEFAULT_BURST, DEFAULT_RATE, OpenLimit
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
        ["session-open-rate", None, str(DEFAULT_RATE),
         "Session opens per second one source address (an IPv6 /64) may sustain; each"
         " costs the tracker a ticket check, and past it an open is refused at once with"
         " a sentence saying how long to wait ('0' for no limit)."],
        ["session-open-burst", None, str(DEFAULT_BURST),
         "Session opens one source address may make at once before"
         " --session-open-rate applies."],
        ["tokens", None, None,
         "Tokens file (the tracker's format; a copy of the tracker's file will do): every"
         " board must say hello with a board token it lists before the proxy does"
         " anything for it (a client's credential is its ticket). SIGHUP reads it again"
         " (a file with a mistake keeps the old tokens). Without it the proxy"
         " listens on loopback only (see --insecure-no-auth)."],
    ]
    optFlags = [
        ["insecure-no-auth", None,
         "Listen beyond loopback without --tokens: anyone who can connect may then ask"
         " the tracker behind this proxy to register boards through it. Only for a"
         " network you trust completely."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen for boards and clients on this Twisted endpoint (repeatable; default
        tcp:9090 with --tokens, else tcp:9090:interface=127.0.0.1), e.g.
        tcp:9090:interface=192.0.2.7, ssl:9090:..., systemd:...."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if self["tokens"] and self["insecure-no-auth"]:
            raise usage.UsageError(
                "--insecure-no-auth runs the proxy without a tokens file; it makes no"
                " sense with --tokens: leave one of them out.")
        if not self["listen"]:
            self["listen"] = ["tcp:9090" if self["tokens"] else "tcp:9090:interface=127.0.0.1"]
        if not self["tokens"] and not self["insecure-no-auth"]:
            for endpoint in self["listen"]:
                scope = endpoint_scope(endpoint)
                if scope == "network" or (scope == "unknown"
                                          and not endpoint.startswith("systemd:")):
                    raise usage.UsageError(open_proxy_refused(f"--listen {endpoint}"))
        self["access"] = None
        if self["tokens"]:
            try:
                self["access"] = Access(load_tokens(self["tokens"]), allow_anonymous=True)
            except TokensFileError as e:
                raise usage.UsageError(str(e)) from e
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
        try:
            rate = float(self["session-open-rate"])
            burst = int(self["session-open-burst"])
            if not rate >= 0 or rate == float("inf") or burst < 1:
                raise ValueError("the rate must be 0 or more and the burst 1 or more")
        except ValueError as e:
            raise usage.UsageError(
                "--session-open-rate takes a number of opens per second (0 for no limit)"
                f" and --session-open-burst a whole number of opens: {e}.") from e
        self["open-limit"] = OpenLimit(rate=rate, burst=burst) if rate > 0 else None
        self["max-connections-per-address"] = count or None
        self["max-unauthenticated"] = waiting or None
        self["hello-timeout"] = hello or None


def open_proxy_refused(where: str) -> str:
    """The sentence a proxy without a tokens file says when asked to serve a network."""
    return (
        f"compass-proxy has no --tokens file, so it serves loopback only, but {where} is"
        " reachable from the network: anyone there could register boards through it"
        " and take clients' models. Give it the tracker's tokens file (--tokens FILE),"
        " listen on 127.0.0.1, or, on a network you trust completely, pass"
        " --insecure-no-auth."
    )


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from .service import ProxyService

    top = service.MultiService()
    proxy = ProxyService(reactor, options["tracker-endpoint"], options["advertise"],
                         dial_timeout=float(options["dial-timeout"]),
                         idle_timeout=float(options["idle-timeout"]),
                         access=options.get("access"),
                         open_limit=options.get("open-limit"),
                         tokens_path=options["tokens"] or None)
    proxy.setServiceParent(top)
    ReloadOnHangup(reactor, proxy.reload_access).setServiceParent(top)
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
    if options.get("access") is None and not options["insecure-no-auth"]:
        def loopback_only(address: Any) -> str | None:
            if bound_scope(address) in ("loopback", "local"):
                return None
            return open_proxy_refused(f"the socket {describe_address(address)}")

        for listener in listeners:
            listener.check = loopback_only
    for endpoint in options["listen"]:
        if server_cleartext(endpoint):
            warn_cleartext("Tokens and tickets relayed by this proxy",
                           f"to it on {endpoint}",
                           "listen with --listen ssl:9090:privateKey=KEY.pem:certKey=CERT.pem")
    host = cleartext_host(options["tracker-endpoint"])
    if host is not None:
        warn_cleartext("Tokens and tickets relayed to the tracker", f"to {host}",
                       "give --tracker as tls:host=HOST:port=PORT:ca=CA.pem")
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
