"""``twistd compass-tracker``: its options and how they become a running service."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from twisted.application import service
from twisted.internet.protocol import Protocol
from twisted.python import usage

from .. import hangup
from ..addresses import dial_address
from ..listening import (
    Listener,
    bound_scope,
    describe_address,
    endpoint_scope,
    server_cleartext,
    warn_cleartext,
)
from ..metrics import metrics_listener
from ..protocol.limits import (
    HELLO_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_UNAUTHENTICATED,
    ConnectionGuard,
)
from ..systemd import SystemdNotifier, default_listen, plural
from ..tls import ClientCertListener, TLSFailed, load_ca
from . import persist
from .access import Access, TokensFileError, load_tokens, shares_of
from .audit import AuditLog
from .frontdoor import front_door_factory, parse_networks
from .history import MemoryHistory
from .metrics import TrackerMetrics, connection_counts
from .records import Policy
from .scheduler import Scheduler
from .service import TrackerConnection, TrackerService, log
from .standby import LockKeeper, Standby, default_advertise
from .store import IStore, Journal, Snapshot, StoreError, store_for
from .store.journal import DAY
from .store.postgresql import ActiveLock, PostgresStore
from .tvm import TvmTrackerConnection, tvm_ledger
from .tvmlimits import TvmLimits

_TVM = TvmLimits()


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number of seconds")
    return value


def _optional_seconds(text: str) -> float | None:
    return None if text in ("0", "none", "never") else _seconds(text)


def _nonnegative_seconds(text: str) -> float:
    return 0.0 if text in ("0", "none", "off") else _seconds(text)


def _count(text: str) -> int | None:
    if text in ("0", "none"):
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive count")
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run compass-tracker: it keeps pools of NPU boards (devices) by key, queues"
        " requests per key by priority and fair share between users, grants leases with"
        " single-use tickets, ends leases at their deadline, and takes a device offline"
        " when its server stops answering. Clients and `compass status` talk to it over"
        " AMP. Durations are in seconds."
    )

    optParameters = [
        ["tokens", None, None,
         "Tokens file (sha256:HASH user=NAME roles=client,board,admin keys=PATTERNS per"
         " line; `compass token` makes entries). Without it anyone who can connect may"
         " use and administer the tracker, so it then listens on loopback only (see"
         " --insecure-no-auth)."],
        ["default-lease", None, 600.0, "Lease length when a request names none.", _seconds],
        ["max-lease", None, 3600.0, "Longest lease any request gets.", _seconds],
        ["claim-timeout", None, 60.0,
         "A granted ticket not presented to its board within this time ends the lease"
         " ('0' for never).", _optional_seconds],
        ["heartbeat-timeout", None, 15.0,
         "A board silent for this long is dropped and its devices go offline. Boards"
         " send a heartbeat every third of it.", _seconds],
        ["forget-offline", None, 86400.0,
         "Forget a device that has been offline this long ('0' for never).",
         _optional_seconds],
        ["max-queued-per-user", None, 1000,
         "Waiting requests one user may have at once ('0' for no limit).", _count],
        ["fair-share-half-life", None, 86400.0,
         "Fair share: at one priority the user with the least board time lately (per"
         " share) goes first; a board-second counts half after this long ('0': users"
         " take turns instead, the least recently granted first).",
         _nonnegative_seconds],
        ["position-interval", None, 0.5,
         "Push queue positions to waiting clients at most this often.", _seconds],
        ["board-ca", None, None,
         "PEM file of the CA that signs board certificates: the board role then needs"
         " TLS with a client certificate it signed (ssl: --listen endpoints ask for one)."],
        ["audit-log", None, None,
         "Append audit events (registrations, grants, releases, expiries, kicks,"
         " refusals) to this file as JSON lines. SIGHUP reopens it."],
        ["max-connections-per-address", None, MAX_CONNECTIONS_PER_ADDRESS,
         "Connections one IP address may have open at once before they say hello ('0'"
         " for no limit).", _count],
        ["max-unauthenticated", None, MAX_UNAUTHENTICATED,
         "Connections from all addresses together that may wait for hello at once; past"
         " it the oldest from the busiest address is closed ('0' for no limit).", _count],
        ["hello-timeout", None, HELLO_TIMEOUT,
         "A connection that has not said hello within this time is closed ('0' for"
         " never).", _optional_seconds],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this Twisted endpoint, e.g."
         " tcp:9290:interface=127.0.0.1 (off unless given; see docs/monitoring.md)."],
        ["http", None, None,
         "Serve the web dashboard on this Twisted endpoint, e.g."
         " tcp:9280:interface=127.0.0.1 or ssl:9280:privateKey=key.pem:certKey=cert.pem"
         " (off unless given). It takes the same tokens as the compass command."],
        ["tvm-max-connections-per-address", None, _TVM.connections_per_address,
         "TVM connections (past TVM's magic) one IP address may have open ('0' for no"
         " limit).", _count],
        ["tvm-max-connections", None, _TVM.connections,
         "TVM connections from all addresses together ('0' for no limit).", _count],
        ["tvm-max-devices-per-address", None, _TVM.devices_per_address,
         "TVM devices (PUT) one IP address may register, offline ones included until"
         " forgotten ('0' for no limit).", _count],
        ["tvm-max-devices", None, _TVM.devices,
         "TVM devices from all addresses together ('0' for no limit).", _count],
        ["tvm-max-requests-per-address", None, _TVM.requests_per_address,
         "TVM requests one IP address may have waiting ('0' for no limit).", _count],
        ["tvm-max-requests", None, _TVM.requests,
         "TVM requests waiting from all addresses together ('0' for no limit).", _count],
        ["tvm-forget-offline", None, _TVM.forget_offline,
         "Forget a TVM device this long after its server's connection closed, unless"
         " it came back ('0' for --forget-offline).", _optional_seconds],
        ["store", None, None,
         "Where the tracker keeps its state (devices and admin state, leases, waiting"
         " requests, history) so that a restart loses nothing: a SQLite file path (or"
         " sqlite:PATH), postgresql://USER@HOST/DATABASE, or 'none' for memory only."
         " Default: tracker.sqlite in $STATE_DIRECTORY (/var/lib/compass-tracker under"
         " systemd; the same for root otherwise, else ~/.local/state/compassd)."],
        ["advertise", None, None,
         "With a postgresql:// --store: the HOST:PORT clients and boards dial for this"
         " tracker. Two trackers on one PostgreSQL database are a standby pair: the one"
         " holding the database's advisory lock is active, the other redirects every"
         " client and board to the address the active one advertised, and takes over"
         " when it stops (see docs/operations.md). Default: the first --listen port on"
         " this machine's name."],
        ["history-days", None, 90.0,
         "Keep a history row of every lease and unserved request this many days ('0'"
         " for ever).", float],
        ["reattach-grace", None, 60.0,
         "After a restart, a waiting request or a lease whose client has not re-attached"
         " within this time ends (withdrawn, or client lost).", _seconds],
        ["idle-timeout", None, 600.0,
         "A client connection that sends nothing for this long while it has no request"
         " waiting and holds no lease is closed ('0' for never).", _optional_seconds],
    ]
    optFlags = [
        ["allow-anonymous", None,
         "With --tokens, also let callers without a token request devices (as users)."],
        ["insecure-no-auth", None,
         "Run without --tokens on addresses other than loopback: anyone who can connect"
         " may then use and administer the tracker, register boards and receive other"
         " people's models. Only for a network you trust completely."],
        ["tvm", None,
         "Also speak Apache TVM's (unauthenticated) tracker protocol on every --listen"
         " port, so unmodified TVM servers, clients and tools can use this tracker. Off"
         " unless given; see also --tvm-listen and --tvm-allow."],
    ]
    compData = usage.Completions(optActions={
        "tokens": usage.CompleteFiles(), "board-ca": usage.CompleteFiles(),
        "audit-log": usage.CompleteFiles()})

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tvm-listen"] = []
        self["tvm-allow"] = []
        self["key-max-lease"] = {}

    def opt_tvm_listen(self, endpoint: str) -> None:
        """Serve TVM's tracker protocol (only) on this endpoint too (repeatable); implies
        TVM support."""
        self["tvm-listen"].append(endpoint)

    def opt_tvm_allow(self, network: str) -> None:
        """Serve TVM's protocol only to peers in this address or network, e.g.
        127.0.0.1 or 10.1.0.0/16 (repeatable; default: any peer that can connect)."""
        try:
            self["tvm-allow"].extend(parse_networks([network]))
        except ValueError as e:
            raise usage.UsageError(f"--tvm-allow: {e}.") from e

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this Twisted endpoint (repeatable; default: the sockets systemd
        passed, else tcp:9190), e.g.
        tcp:9190:interface=127.0.0.1, ssl:9190:privateKey=key.pem:certKey=cert.pem,
        systemd:domain=INET:index=0."""
        self["listen"].append(endpoint)

    def opt_key_max_lease(self, value: str) -> None:
        """KEY=SECONDS: the longest lease for devices of KEY (repeatable)."""
        key, sep, seconds = value.partition("=")
        if not sep or not key:
            raise usage.UsageError(f"--key-max-lease takes KEY=SECONDS, not {value!r}.")
        try:
            self["key-max-lease"][key] = _seconds(seconds)
        except ValueError as e:
            raise usage.UsageError(f"--key-max-lease {value}: {e}.") from e

    def postOptions(self) -> None:
        if self["tokens"] and self["insecure-no-auth"]:
            raise usage.UsageError(
                "--insecure-no-auth runs the tracker without a tokens file; it makes no"
                " sense with --tokens: leave one of them out.")
        if not self["listen"]:
            self["listen"] = default_listen(
                "tcp:9190" if self["tokens"] else "tcp:9190:interface=127.0.0.1")
        if not self["tokens"] and not self["insecure-no-auth"]:
            for endpoint in self["listen"]:
                # systemd: sockets are checked once bound (makeService)
                scope = endpoint_scope(endpoint)
                if scope == "network" or (scope == "unknown"
                                          and not endpoint.startswith("systemd:")):
                    raise usage.UsageError(open_tracker_refused(f"--listen {endpoint}"))
            # Without tokens every visitor of the dashboard is an admin.
            if self["http"] and endpoint_scope(self["http"]) not in ("loopback", "local"):
                raise usage.UsageError(open_tracker_refused(f"--http {self['http']}"))
        if self["default-lease"] > self["max-lease"]:
            raise usage.UsageError(
                f"--default-lease ({self['default-lease']:g} s) is longer than --max-lease"
                f" ({self['max-lease']:g} s)."
            )
        if self["allow-anonymous"] and not self["tokens"]:
            raise usage.UsageError("--allow-anonymous only makes sense with --tokens.")
        if self["tokens"]:
            try:
                self["access"] = Access(load_tokens(self["tokens"]), self["allow-anonymous"])
            except TokensFileError as e:
                raise usage.UsageError(str(e)) from e
        else:
            self["access"] = Access()
        if self["board-ca"]:
            try:
                load_ca(self["board-ca"])
            except TLSFailed as e:
                raise usage.UsageError(f"--board-ca: {e}") from e
        if self["advertise"]:
            try:
                self["advertise"] = dial_address(self["advertise"])
            except ValueError as e:
                raise usage.UsageError(f"--advertise: {e}") from e
        if self["history-days"] < 0:
            raise usage.UsageError("--history-days must be 0 (for ever) or more.")
        # Defaults are not coerced by usage.
        for name, coerce in (("max-connections-per-address", _count),
                             ("max-unauthenticated", _count),
                             ("hello-timeout", _optional_seconds),
                             ("tvm-max-connections-per-address", _count),
                             ("tvm-max-connections", _count),
                             ("tvm-max-devices-per-address", _count),
                             ("tvm-max-devices", _count),
                             ("tvm-max-requests-per-address", _count),
                             ("tvm-max-requests", _count),
                             ("tvm-forget-offline", _optional_seconds)):
            if isinstance(self[name], (int, float)) and not isinstance(self[name], bool):
                self[name] = coerce(str(self[name]))


def open_tracker_refused(where: str) -> str:
    """The sentence a tracker without a tokens file says when asked to serve a network."""
    return (
        f"compass-tracker has no --tokens file, so it serves loopback only, but {where}"
        " is reachable from the network: anyone there could use and administer it,"
        " register fake boards and receive other people's models. Give it a tokens file"
        " (--tokens FILE; `compass token` makes its lines), listen on 127.0.0.1, or, on a"
        " network you trust completely, pass --insecure-no-auth."
    )


def _tokens_in_clear(where: str) -> None:
    warn_cleartext("Tokens (and the tickets this tracker grants)",
                   f"to and from this tracker {where}",
                   "listen with --listen ssl:9190:privateKey=KEY.pem:certKey=CERT.pem and"
                   " give clients --ca")


def make_tracker(options: Options, reactor: Any) -> TrackerService:
    policy = Policy(
        default_lease=options["default-lease"],
        max_lease=options["max-lease"],
        key_max_lease=dict(options["key-max-lease"]),
        claim_timeout=options["claim-timeout"],
        forget_offline=options["forget-offline"],
        max_queued_per_user=options["max-queued-per-user"],
        fair_share_half_life=options["fair-share-half-life"],
        shares=shares_of(options["access"].tokens),
    )
    return TrackerService(
        reactor=reactor,
        scheduler=Scheduler(policy=policy),
        access=options["access"],
        heartbeat_timeout=options["heartbeat-timeout"],
        position_interval=options["position-interval"],
        idle_timeout=options["idle-timeout"],
        audit=AuditLog(options["audit-log"], reactor.seconds) if options["audit-log"]
        else None,
        board_ca=options["board-ca"],
        tokens_path=options["tokens"],
    )


def tvm_limits(options: Options) -> TvmLimits:
    """What TVM peers may hold, from the --tvm-* options."""
    return TvmLimits(
        connections_per_address=options["tvm-max-connections-per-address"],
        connections=options["tvm-max-connections"],
        devices_per_address=options["tvm-max-devices-per-address"],
        devices=options["tvm-max-devices"],
        requests_per_address=options["tvm-max-requests-per-address"],
        requests=options["tvm-max-requests"],
        forget_offline=options["tvm-forget-offline"],
    )


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    top = service.MultiService()
    tracker = make_tracker(options, reactor)
    keeper = open_store(tracker, options, reactor)
    tracker.setServiceParent(top)
    if keeper is not None:
        keeper.setServiceParent(top)
    if options["access"].open and options["insecure-no-auth"]:
        log.warn("--insecure-no-auth: no --tokens file, and this tracker may listen beyond"
                 " loopback: anyone who can connect may use and administer it")
    elif options["access"].open:
        log.info("no --tokens file: this tracker serves loopback only, and every local"
                 " caller may use and administer it")
    tvm = options["tvm"] or bool(options["tvm-listen"])
    if tvm:
        tvm_ledger(tracker, tvm_limits(options))
        make_tvm = partial(TvmTrackerConnection, tracker)
        main = front_door_factory(partial(TrackerConnection, tracker), make_tvm,
                                  options["tvm-allow"])
        log.warn("TVM's tracker protocol is on: TVM peers are not authenticated")
    else:
        main = tracker.factory()
    main = ConnectionGuard(main, reactor, what="tracker",
                           per_address=options["max-connections-per-address"],
                           hello_timeout=options["hello-timeout"],
                           unauthenticated=options["max-unauthenticated"])
    listeners: list[Listener] = []
    for endpoint in options["listen"]:
        if options["board-ca"]:
            listeners.append(ClientCertListener(reactor, "compass-tracker", endpoint, main,
                                                ca=options["board-ca"]))
        else:
            listeners.append(Listener(reactor, "compass-tracker", endpoint, main))
    if options["access"].open and not options["insecure-no-auth"]:
        def loopback_only(address: Any) -> str | None:
            if bound_scope(address) in ("loopback", "local"):
                return None
            return open_tracker_refused(f"the socket {describe_address(address)}")

        for listener in listeners:
            listener.check = loopback_only
    elif not options["access"].open:
        def tokens_in_clear(address: Any) -> None:
            if bound_scope(address) == "network":
                _tokens_in_clear(f"on {describe_address(address)}")

        for listener in listeners:
            if server_cleartext(listener.endpoint):
                _tokens_in_clear(f"on {listener.endpoint}")
            elif listener.endpoint.startswith("systemd:"):
                listener.check = tokens_in_clear
    if tracker.tokens_path or tracker.audit:
        ReloadOnHangup(reactor, tracker).setServiceParent(top)
    for endpoint in options["tvm-listen"]:
        only_tvm = ConnectionGuard(
            front_door_factory(lambda: _Refuse(), make_tvm, options["tvm-allow"]), reactor,
            what="tracker's TVM port", per_address=options["max-connections-per-address"],
            hello_timeout=options["hello-timeout"],
            unauthenticated=options["max-unauthenticated"])
        listeners.append(Listener(reactor, "compass-tracker (TVM protocol)", endpoint,
                                  only_tvm))
    for listener in listeners:
        listener.setServiceParent(top)
    if options["metrics"]:
        metrics = TrackerMetrics(lambda: tracker.scheduler,
                                 lambda: connection_counts(tracker.connections()))
        tracker.observers.append(metrics.observe)
        tracker.refusals.append(metrics.refused_hello)
        metrics_listener(reactor, "compass-tracker", options["metrics"],
                         metrics.registry).setServiceParent(top)
    if options["http"]:
        DashboardService(reactor, tracker, options["http"]).setServiceParent(top)
    SystemdNotifier(
        reactor,
        is_ready=lambda: all(listener.port is not None for listener in listeners),
        status=lambda: tracker_status(tracker),
    ).setServiceParent(top)
    return top


def open_store(tracker: TrackerService, options: Options, reactor: Any
               ) -> LockKeeper | None:
    """Open the tracker's store and bring back its state; a store that cannot be opened
    stops the tracker from starting (with the store's sentence).

    With a PostgreSQL store the tracker first asks for the database's active lock (once,
    before it listens; later in a thread): if another tracker holds it, this one starts
    as its standby and brings the state back only when it takes the lock. The keeper
    of the lock that is returned then runs as a service next to the tracker."""
    store = store_for(options["store"])
    if store is None:
        log.warn("--store none: the tracker's state is in memory only; a restart loses"
                 " every waiting request, lease, drain and history row")
        return None
    lock = None
    try:
        store.open()
        if isinstance(store, PostgresStore):
            lock = ActiveLock(store.url, options["advertise"]
                              or default_advertise(options["listen"]))
            if not lock.try_take(time.time()):
                tracker.standby = Standby(lock.address, lock.active(), reactor.seconds())
                log.info("state store: {store}; another tracker holds its active lock, so"
                         " this one ({address}) is its standby and redirects clients and"
                         " boards to {active} until it takes over",
                         store=store.description, address=lock.address,
                         active=tracker.standby.active or "the active tracker")
                return LockKeeper(reactor, tracker, lock, load=partial(_reload, store),
                                  restore=partial(_restore, tracker, store, options,
                                                  reactor))
        snapshot = store.load()
    except StoreError as e:
        store.close()
        if lock is not None:
            lock.close()
        raise SystemExit(f"compass-tracker: {e} The tracker did not start.") from None
    _restore(tracker, store, options, reactor, snapshot)
    if lock is None:
        return None
    log.info("this tracker holds the active lock of {store} and is the active one;"
             " standbys redirect to {address}", store=store.description,
             address=lock.address)
    return LockKeeper(reactor, tracker, lock, load=partial(_reload, store),
                      restore=partial(_restore, tracker, store, options, reactor))


def _reload(store: IStore) -> Snapshot:
    """A standby took the lock: open the store again (its connection may have gone
    stale while it waited) and read it. Blocks: called in a thread."""
    store.open()
    return store.load()


def _restore(tracker: TrackerService, store: IStore, options: Options, reactor: Any,
             snapshot: Snapshot) -> None:
    days = options["history-days"]
    journal = Journal(
        store, reactor, lambda: persist.live_state(tracker.scheduler),
        retention=days * DAY if days else None)
    log.info("state store: {store} (start {epoch})", store=store.description,
             epoch=snapshot.epoch)
    tracker.take_over(journal, snapshot, options["reattach-grace"])


def tracker_status(tracker: TrackerService) -> str:
    """The tracker's one-line state for systemd, e.g. C{3 devices, 1 leased, 2 waiting}."""
    if tracker.standby is not None:
        return f"standby; the active tracker is {tracker.standby.active or 'not known yet'}"
    scheduler = tracker.scheduler
    devices = scheduler.devices.values()
    offline = sum(1 for device in devices if not device.online)
    text = plural(len(devices), "device")
    if offline:
        text += f" ({offline} offline)"
    return f"{text}, {len(scheduler.leases)} leased, {len(scheduler.requests)} waiting"


class DashboardService(service.MultiService):
    """The web dashboard on one endpoint, with its history kept in memory."""

    def __init__(self, reactor: Any, tracker: TrackerService, endpoint: str) -> None:
        super().__init__()
        from .web import Dashboard

        history = MemoryHistory()
        tracker.observers.append(history.observe)
        self.dashboard = Dashboard(tracker, history)
        tracker.observers.append(self.dashboard.observe)
        site: Any = self.dashboard.site()
        Listener(reactor, "compass-tracker dashboard", endpoint, site).setServiceParent(self)

    def stopService(self) -> Any:
        self.dashboard.stop()
        return super().stopService()


class ReloadOnHangup(hangup.ReloadOnHangup):
    """On SIGHUP, read the tokens file again and reopen the audit log, without
    dropping a connection."""

    def __init__(self, reactor: Any, tracker: TrackerService) -> None:
        super().__init__(reactor, tracker.reload_access)
        self.tracker = tracker


class _Refuse(Protocol):
    """On a TVM-only port, anything that is not TVM's protocol is hung up on."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]
