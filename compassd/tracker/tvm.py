"""TVM's tracker protocol in compass-tracker: TVM servers become devices, TVM clients'
requests wait in the same queues.

A TVM server offers its device once per PUT (with a fresh match key); a grant hands that
match key to one TVM client, and the device stays busy until the server PUTs again after
its session (or after noticing, through GET_PENDING_MATCHKEYS, that a grant was never
used). A TVM client is only granted TVM servers, since it speaks TVM's session protocol;
compassd clients never get them. Unlike TVM's tracker, a connection's offers and waiting
requests are removed when it closes, and oversized or malformed frames close it.

TVM peers are not authenticated, so what they may hold is capped by address and in total
(L{compassd.tracker.tvmlimits}): connections, devices and waiting requests; priorities
are bounded; a TVM request's user is always C{tvm:USER} or C{tvm@ADDRESS}, so it counts
against a quota of its own and never a compassd user's; and a TVM device whose server has
gone is forgotten after minutes, not kept as long as a compassd board's.
"""

from __future__ import annotations

import re
import weakref
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..listening import describe_address
from ..protocol import client_tracker as ct
from ..protocol import tvm_tracker as wire
from ..protocol.errors import CompassError
from .tvmlimits import TvmLedger, TvmLimits

if TYPE_CHECKING:
    from .service import TrackerService

log = Logger(namespace="compass.tracker.tvm")

TVM = "tvm"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+=-]")


def device_name(host: str, port: int) -> str:
    """The compassd name of the TVM server at host:port."""
    return "tvm-" + _UNSAFE.sub("_", f"{host}:{port}")


def tvm_user(user: str, host: str) -> str:
    """The compassd user name of a TVM request: C{tvm:USER}, or C{tvm@HOST} when the
    request names nobody (TVM's own clients never do)."""
    if user:
        return "tvm:" + _UNSAFE.sub("_", user)[:60]
    return "tvm@" + _UNSAFE.sub("_", host)


_LEDGERS: weakref.WeakKeyDictionary[Any, TvmLedger] = weakref.WeakKeyDictionary()


def tvm_ledger(tracker: TrackerService, limits: TvmLimits | None = None) -> TvmLedger:
    """The count of what TVM peers hold on C{tracker} (one per tracker); C{limits}, when
    given, replaces its caps (the tap sets them from the options)."""
    ledger = _LEDGERS.get(tracker)
    if ledger is None:
        ledger = _LEDGERS[tracker] = TvmLedger()
    if limits is not None:
        ledger.limits = limits
    return ledger


class TvmTrackerConnection(Protocol):
    """One TVM peer (server, client, proxy or query tool) on the tracker."""

    def __init__(self, tracker: TrackerService) -> None:
        self.tracker = tracker
        self.decoder = wire.FrameDecoder()
        self.greeted = False
        self.alive = False
        self.peer_host = "0.0.0.0"
        self.peer = "a TVM peer"
        self.info: dict[str, Any] | None = None
        self.offers: dict[str, str] = {}  # device name -> pending match key
        self.granted: dict[str, str] = {}  # device name -> match key handed out
        self.registered: set[str] = set()  # device names this connection registered
        self.waiting: set[str] = set()  # ids of this connection's waiting requests
        self.ledger = tvm_ledger(tracker)
        self.counted = False  # whether the ledger counts this connection
        self._warned = False
        self._magic = b""

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<TvmTrackerConnection {self.peer}>"

    def describe(self) -> str:
        return self.peer

    @property
    def user(self) -> str:
        return tvm_user("", self.peer_host)

    def connectionMade(self) -> None:
        address = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer_host = getattr(address, "host", "0.0.0.0")
        self.peer = describe_address(address)
        refusal = self.ledger.connection_refusal(self.peer_host)
        standby = self.tracker.standby
        if standby is not None:
            refusal = (f"this tracker is a standby; the active one is at"
                       f" {standby.active or 'a place not known yet'}")
        if refusal is not None:
            log.warn("refused a TVM connection from {peer}: {why}", peer=self.peer,
                     why=refusal)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.alive = self.counted = True
        self.ledger.connection_opened(self.peer_host)
        self.tracker.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.alive = False
        if not self.counted:
            return
        self.counted = False
        self.ledger.connection_closed(self.peer_host)
        self.ledger.request_gone(self.peer_host, len(self.waiting))
        self.waiting.clear()
        self.tracker.disconnected(self, reason.getErrorMessage())
        forget = self.ledger.limits.forget_offline
        mine = sorted(name for name in self.registered if self._owns(name))
        if mine and forget is not None:
            self.tracker.reactor.callLater(forget, self._forget, mine, forget)

    def _owns(self, name: str) -> bool:
        device = self.tracker.scheduler.devices.get(name)
        return device is not None and device.owner is self

    def _forget(self, names: list[str], after: float) -> None:
        """Remove the devices this (closed) connection registered that are still
        offline: their server did not come back within C{after} seconds."""
        effects = []
        for name in names:
            if self._owns(name):
                effects += self.tracker.scheduler.forget(
                    self.tracker.now(), name,
                    f"its TVM server was gone for {after:g} s")
        self.tracker.apply(effects)

    def dataReceived(self, data: bytes) -> None:
        if not self.alive:
            return
        if not self.greeted:
            self._magic += data
            if len(self._magic) < 4:
                return
            if self._magic[:4] != wire.TRACKER_MAGIC:
                self._close("it did not start with TVM's tracker magic")
                return
            self.greeted = True
            self.transport.write(wire.TRACKER_MAGIC)  # type: ignore[union-attr]
            data, self._magic = self._magic[4:], b""
        try:
            frames = self.decoder.feed(data)
            for frame in frames:
                if not self.alive:
                    return
                self._handle(wire.parse_message(frame))
        except wire.TvmProtocolError as e:
            self._close(str(e))

    def _close(self, why: str) -> None:
        log.warn("closing TVM connection from {peer}: {why}", peer=self.peer, why=why)
        self.alive = False
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _send(self, payload: Any) -> None:
        if self.alive:
            self.transport.write(wire.encode(payload))  # type: ignore[union-attr]

    # --- messages ---------------------------------------------------------------------

    def _handle(self, message: wire.Message) -> None:
        tracker = self.tracker
        now = tracker.now()
        if isinstance(message, wire.Ping):
            self._send(wire.SUCCESS)
        elif isinstance(message, wire.Stop):
            # Only TVM's own launcher knows its stop key; nobody may stop this tracker so.
            self._send(wire.FAIL)
        elif isinstance(message, wire.UpdateInfo):
            info = dict(message.info)
            if "addr" in info:
                info["addr"] = [message.addr_host or self.peer_host, message.addr_port]
            self.info = info
            self._send(wire.SUCCESS)
        elif isinstance(message, wire.Put):
            self._send(wire.SUCCESS if self._put(now, message) else wire.FAIL)
        elif isinstance(message, wire.RequestSlot):
            self._request(now, message)
        elif isinstance(message, wire.Summary):
            self._send([wire.SUCCESS, self._summary()])
        elif isinstance(message, wire.PendingMatchKeys):
            self._send(sorted(self.offers.values()))

    def _refused(self, what: str, why: str) -> None:
        """Log a refusal, once per connection (a peer that repeats it writes no more)."""
        if not self._warned:
            self._warned = True
            log.warn("refused {what} from TVM peer {peer}: {why}", what=what,
                     peer=self.peer, why=why)

    def _put_refusal(self, name: str, device: Any) -> str | None:
        if device is not None and device.flavor != TVM:
            return (f"The device name {name} belongs to a compassd board; a TVM server"
                    " may not take it over.")
        owner = self.tracker.device_owners.get(name)
        if owner is not None:
            return (f"The device name {name} belongs to {owner}, who registered it first;"
                    " a TVM server may not take it over.")
        return self.ledger.device_refusal(self.peer_host, name, self._held)

    def _held(self, name: str, host: str) -> bool:
        """Whether the device C{name} is still in the tracker for a TVM peer at C{host}."""
        device = self.tracker.scheduler.devices.get(name)
        return (device is not None and isinstance(device.owner, TvmTrackerConnection)
                and device.owner.peer_host == host)

    def _put(self, now: float, put: wire.Put) -> bool:
        host = put.custom_addr or self.peer_host
        name = device_name(host, put.port)
        scheduler = self.tracker.scheduler
        effects = []
        device = scheduler.devices.get(name)
        if not (device is not None and device.owner is self):
            refusal = self._put_refusal(name, device)
            if refusal is not None:
                self._refused(f"a PUT of {name}", refusal)
                return False
        if device is not None and device.owner is self and device.key == put.key:
            lease = device.lease
            if lease is not None:
                # The server offers itself again: its last session is over (or the
                # grant was never used and it noticed).
                effects += scheduler.session_ended(
                    now, self, name, lease.id, "the TVM server offered itself again"
                )
            self.granted.pop(name, None)
            self.offers[name] = put.match_key
            effects += scheduler.arm(now, self, name)
        else:
            self.offers[name] = put.match_key
            effects += scheduler.register(
                now, self, name, put.key, f"{host}:{put.port}",
                info=["protocol=tvm"], flavor=TVM, takeover=device is not None,
            )
            self.registered.add(name)
            self.ledger.device_added(self.peer_host, name)
        log.info("TVM server {name} at {peer} offers {key}", name=name, peer=self.peer,
                 key=put.key)
        self.tracker.apply(effects)
        return True

    def _request(self, now: float, message: wire.RequestSlot) -> None:
        user = tvm_user(message.user, self.peer_host)
        refusal = self.ledger.request_refusal(self.peer_host, message.priority)
        if refusal is not None:
            self._refused("a request", refusal)
            self._send([wire.FAIL, refusal])
            return
        try:
            request, effects = self.tracker.scheduler.request(
                now, self, user, message.key, priority=message.priority, flavor=TVM
            )
        except CompassError as e:
            self._send([wire.FAIL, str(e)])
            return
        self.waiting.add(request.id)
        self.ledger.request_added(self.peer_host)
        log.info("TVM client {user} at {peer} requests {key} (priority {priority}) as {id}",
                 user=user, peer=self.peer, key=message.key, priority=message.priority,
                 id=request.id)
        self.tracker.apply(effects)

    def _summary(self) -> dict[str, Any]:
        scheduler = self.tracker.scheduler
        queues: dict[str, dict[str, int]] = {}
        for key in scheduler.keys():
            devices = [d for d in scheduler.pool_devices(key) if d.flavor == TVM and d.online]
            pending = sum(
                1 for rid in scheduler.waiting_ids(key)
                if scheduler.requests[rid].flavor == TVM
            )
            if devices or pending:
                free = sum(1 for d in devices if d.grantable)
                queues[key] = {"free": free, "pending": pending}
        servers = [
            {"key": c.info["key"], "addr": c.info.get("addr")}
            for c in self.tracker.tvm_connections()
            if c.info and str(c.info.get("key", "")).startswith("server")
        ]
        return {"queue_info": queues, "server_info": servers}

    # --- what the scheduler tells this connection -------------------------------------

    def notify(self, command: type[amp.Command], arguments: dict[str, Any]) -> None:
        if command in (ct.Granted, ct.RequestEnded) and arguments["request"] in self.waiting:
            self.waiting.discard(arguments["request"])
            self.ledger.request_gone(self.peer_host)
        if command is ct.Granted:
            name = arguments["device"]
            owner = self.tracker.scheduler.devices[name].owner
            match_key = ""
            if isinstance(owner, TvmTrackerConnection):
                match_key = owner.offers.pop(name, "")
                owner.granted[name] = match_key
            host, _, port = arguments["address"].rpartition(":")
            self._send([wire.SUCCESS, [host, int(port), match_key]])
        elif command is ct.RequestEnded:
            self._send([wire.FAIL, arguments["message"]])
