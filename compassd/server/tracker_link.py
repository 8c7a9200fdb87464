"""compass-server's link to the tracker: registered for as long as the server runs.

The link reconnects with backoff whenever the connection drops (tracker restart, network
cut), and on every new connection it says hello as a board, registers the device again
with its current health, and heartbeats at the interval the tracker asked for. If a
heartbeat goes unanswered for a whole interval the tracker is taken as gone and the
connection is dropped, so a reconnection starts at once instead of after TCP gives up.

The server asks the tracker through the link whether a client's ticket is good
(L{TrackerLink.redeem}), tells it when a session ended (L{TrackerLink.session_ended}), and
learns through C{on_revoke} that the tracker ended a lease.

Every registration and heartbeat says which session the device serves (C{report}: lease,
holder, seconds left, or nothing), so the tracker's view and the board's agree within one
heartbeat: after a tracker restart the tracker adopts the running session instead of
granting the device again, a board that stalled and came back goes on with its lease, and
a lease the tracker ended meanwhile is ended here (see docs/tracker.md, "Reconciliation").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import __version__
from .._twisted_private import forget_lost_notification
from ..addresses import TrackerRing, client_endpoint, split_trackers
from ..protocol import SUPPORTED_VERSIONS, Hello
from ..protocol import board_tracker as bt
from ..protocol import proxy as px
from ..protocol.errors import BadRequest, CompassError, Unavailable
from ..protocol.peer import CompassPeer
from ..tls import client_from_string

log = Logger(namespace="compass.server")


@implementer(IStreamClientEndpoint)
class _NoticingFailures:
    """An endpoint that tells C{noticed} why each connection attempt failed (the retry
    policy then logs it with the next delay: ClientService itself only says "Scheduling
    retry", at info level and without the reason)."""

    def __init__(self, endpoint: IStreamClientEndpoint,
                 noticed: Callable[[Failure], object]) -> None:
        self._endpoint = endpoint
        self._noticed = noticed

    def connect(self, factory: Any) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            self._noticed(failure)
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


@implementer(IStreamClientEndpoint)
class _RingEndpoint:
    """The endpoint L{TrackerLink}'s ClientService dials: each connection goes to the
    next tracker of the link's ring."""

    def __init__(self, link: TrackerLink) -> None:
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        return self._link._dial(factory)


@attrs.define
class BoardDescription:
    """What the server registers: the device and how clients reach it."""

    device: str
    key: str
    address: str
    tags: list[str] = attrs.Factory(list)
    info: list[str] = attrs.Factory(list)
    max_lease: float | None = None
    healthy: bool = True
    health_detail: str = ""


class _BoardProtocol(CompassPeer):
    """The board's end of a tracker connection: it only needs to hear revocations."""

    def __init__(self, on_revoke: Callable[[str, str, str, str], object],
                 on_dial: Callable[[str], Deferred[None]] | None = None) -> None:
        super().__init__()
        self._on_revoke = on_revoke
        self._on_dial = on_dial
        self.greeted = True  # the board said hello; the tracker sends no hello back
        self.lost: Deferred[None] = Deferred()

    @bt.Revoke.responder
    def revoke(self, device: str, lease: str, reason: str, message: str) -> dict[str, Any]:
        self._on_revoke(device, lease, reason, message)
        return {}

    @px.Dial.responder
    def dial(self, channel: str) -> Deferred[dict[str, Any]]:
        """A compass-proxy has a client for us: connect back to it on C{channel}."""
        if self._on_dial is None:
            return fail(BadRequest("This board was not started with --proxy; it takes no"
                                   " connections through a proxy."))
        return self._on_dial(channel).addCallback(lambda _: {})

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class TrackerLink(service.Service):
    """Keep one device registered with the tracker at C{endpoint} while running.

    C{endpoint} may list several trackers, separated by commas (a standby pair): the
    link dials them in turn, follows a standby's redirect to the active one, and after
    losing the active one dials the others first."""

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        board: BoardDescription,
        on_revoke: Callable[[str, str, str], object],
        token: str | None = None,
        retry_max_delay: float = 30.0,
        on_dial: Callable[[str], Deferred[None]] | None = None,
        report: Callable[[], tuple[str, str, float] | None | bool] | None = None,
    ) -> None:
        self._reactor = reactor
        self._report = report
        self.endpoints = split_trackers(endpoint)
        """Every tracker this board may register with (several for a standby pair)."""
        self.endpoint = self.endpoints[0]
        """The tracker dialled last (the one registered with, while registered)."""
        self.board = board
        self._on_revoke = on_revoke
        self._token = token
        self._connected: _BoardProtocol | None = None
        self._heartbeat: LoopingCall | None = None
        self._beat_pending = False
        self.registrations = 0
        """How many times the device was registered (once per connection)."""
        factory = Factory.forProtocol(lambda: _BoardProtocol(self._revoked, on_dial))
        self._targets = {e: client_from_string(reactor, e) for e in self.endpoints}
        self._tls = self._targets[self.endpoint][1]
        plain = all(e.partition(":")[0].lower() == "tcp" for e in self.endpoints)
        self._ring = TrackerRing(self.endpoints,
                                 follow=client_endpoint if plain else None)
        self._unreachable: Failure | None = None
        """Why the last connection attempt failed, until the next retry is logged."""
        if len(self.endpoints) > 1:
            retry_max_delay = min(retry_max_delay, 5.0)  # a standby is taking over
        backoff = backoffPolicy(initialDelay=0.5, maxDelay=retry_max_delay)

        def retry_after(attempt: int) -> float:
            delay = float(backoff(attempt))
            failure, self._unreachable = self._unreachable, None
            if failure is not None:
                log.warn("cannot reach the tracker at {endpoint} to register {device}:"
                         " {why}; trying again in {delay:.1f} s ({attempts} failed"
                         " attempts so far)", endpoint=self.endpoint,
                         device=self.board.device, why=failure.getErrorMessage().rstrip("."),
                         delay=delay, attempts=attempt)
            return delay

        self._clients = ClientService(
            _NoticingFailures(_RingEndpoint(self), self._connect_failed),
            factory,
            retryPolicy=retry_after,
            clock=reactor,
            prepareConnection=self._prepare,  # type: ignore[arg-type]
        )

    def _dial(self, factory: Any) -> Deferred[Any]:
        """Connect to the next tracker of the ring (the active one a standby named, or
        the next in turn)."""
        endpoint = self._ring.next()
        if endpoint not in self._targets:
            self._targets[endpoint] = client_from_string(self._reactor, endpoint)
        self.endpoint = endpoint
        target, self._tls = self._targets[endpoint]
        return target.connect(factory)

    def _connect_failed(self, failure: Failure) -> None:
        self._unreachable = failure

    # --- service -------------------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        log.info("registering {device} with the tracker at {endpoint}",
                 device=self.board.device, endpoint=self.endpoint)
        self._clients.startService()

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        self._stop_heartbeat()
        return self._clients.stopService()

    @property
    def registered(self) -> bool:
        """Whether the device is registered on a live connection right now."""
        return self._connected is not None and self._connected.alive

    # --- what the server asks ------------------------------------------------------

    def redeem(self, ticket: str) -> Deferred[dict[str, Any]]:
        """Check C{ticket} with the tracker: the answer has C{lease}, C{user}, C{expires_in}.

        Fails with L{Unavailable} when the tracker cannot be reached right now, or
        with the tracker's own L{TicketRejected}.
        """
        protocol = self._connected
        if protocol is None or not protocol.alive:
            return fail(Unavailable(
                f"The board {self.board.device} cannot reach its tracker at {self.endpoint}"
                " right now, so it cannot check the ticket; try again shortly."))
        d = protocol.callRemote(bt.Redeem, device=self.board.device, ticket=ticket)

        def link_lost(failure: Failure) -> Failure:
            if failure.check(CompassError):
                return failure
            return Failure(Unavailable(
                f"The board {self.board.device} lost its tracker at {self.endpoint} while"
                " checking the ticket; try again shortly."))

        return d.addErrback(link_lost)

    def session_ended(self, lease: str, detail: str = "") -> None:
        """Tell the tracker the session of C{lease} is over and the board free.

        When the tracker is unreachable there is nothing to tell: the lease ended with
        the connection (the tracker ends leases of a board it lost).
        """
        protocol = self._connected
        if protocol is None or not protocol.alive:
            return
        d = protocol.callRemote(bt.SessionEnded, device=self.board.device, lease=lease,
                                detail=detail)
        d.addErrback(lambda f: log.info("the tracker did not take the end of lease {lease}:"
                                        " {why}", lease=lease, why=f.getErrorMessage()))

    def set_health(self, healthy: bool, detail: str = "") -> None:
        """Report a health change; it is also sent again on every registration."""
        changed = healthy != self.board.healthy or detail != self.board.health_detail
        self.board.healthy = healthy
        self.board.health_detail = detail
        protocol = self._connected
        if changed and protocol is not None and protocol.alive:
            d = protocol.callRemote(bt.Health, device=self.board.device, healthy=healthy,
                                    detail=detail)
            d.addErrback(lambda f: log.info("could not report health: {why}",
                                            why=f.getErrorMessage()))

    # --- connection life -----------------------------------------------------------

    def _prepare(self, protocol: _BoardProtocol) -> Deferred[None]:
        arguments: dict[str, Any] = {
            "versions": list(SUPPORTED_VERSIONS),
            "role": "board",
            "software": f"compass-server {__version__}",
        }
        if self._token:
            arguments["token"] = self._token
        board = self.board
        d = protocol.callRemote(Hello, **arguments)

        def register(answer: dict[str, Any]) -> Deferred[dict[str, Any]]:
            if answer.get("active") is not None:
                return redirected(answer["active"])
            serving: dict[str, Any] = {}
            if self._report is not None:
                serving["reports"] = True
                now = self._report()
                if isinstance(now, tuple):
                    serving.update(lease=now[0], holder=now[1], lease_expires_in=now[2])
            return protocol.callRemote(
                bt.Register, device=board.device, key=board.key, address=board.address,
                tags=list(board.tags), info=list(board.info), max_lease=board.max_lease,
                healthy=board.healthy, flavor="compassd", **serving)

        standby: list[str] = []

        def redirected(active: str) -> Deferred[dict[str, Any]]:
            standby.append(active)
            followed = self._ring.redirected(active)
            log.info("the tracker at {endpoint} is a standby; the active one is {active}:"
                     " registering {device} there", endpoint=self.endpoint,
                     active=active or "not known yet", device=board.device)
            forget_lost_notification(protocol)
            protocol.drop()
            where = active if followed else "not known yet"
            return fail(Unavailable(f"The tracker at {self.endpoint} is a standby (the"
                                    f" active one is {where})."))

        def registered(answer: dict[str, Any]) -> None:
            self._ring.answered(self.endpoint)
            self.registrations += 1
            self._connected = protocol
            protocol.lost.addCallback(self._lost, protocol)
            self._start_heartbeat(protocol, answer["heartbeat"])
            log.info("registered {device} in pool {key} as {address}; heartbeat every"
                     " {interval:g} s", device=board.device, key=board.key,
                     address=board.address, interval=answer["heartbeat"])

        def refused(failure: Failure) -> Failure:
            if standby:
                return failure  # a standby's redirect, logged already
            explained = self._tls.explain(failure, f"the tracker at {self.endpoint}") \
                if self._tls is not None else None
            log.warn("the tracker at {endpoint} refused {device}: {why}",
                     endpoint=self.endpoint, device=board.device,
                     why=str(explained) if explained else failure.getErrorMessage())
            # ClientService counts this attempt as failed already and has no transition
            # for the later loss of its connection (a NoTransition traceback in the log,
            # e.g. when the server stops mid-registration): keep that loss from it.
            forget_lost_notification(protocol)
            protocol.drop()
            return failure

        return d.addCallback(register).addCallback(registered).addErrback(refused)

    def _lost(self, _: object, protocol: _BoardProtocol) -> None:
        if self._connected is protocol:
            self._connected = None
            self._stop_heartbeat()
            if self.running:
                log.warn("lost the tracker at {endpoint}; reconnecting",
                         endpoint=self.endpoint)

    def _start_heartbeat(self, protocol: _BoardProtocol, interval: float) -> None:
        self._stop_heartbeat()
        self._beat_pending = False

        def beat() -> None:
            if self._beat_pending:
                log.warn("the tracker did not answer a heartbeat within {interval:g} s;"
                         " reconnecting", interval=interval)
                protocol.drop(abort=True)
                return
            self._beat_pending = True

            def answered(_: object) -> None:
                self._beat_pending = False

            protocol.callRemote(bt.Heartbeat, **self._sessions()).addCallbacks(
                answered, lambda f: None)

        self._heartbeat = LoopingCall(beat)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(interval, now=False)

    def _sessions(self) -> dict[str, Any]:
        """The heartbeat's report of what the device serves (nothing to say while a
        ticket is being checked: the tracker's answer is on its way)."""
        if self._report is None:
            return {}
        now = self._report()
        if now is False:
            return {}
        rows = []
        if isinstance(now, tuple):
            rows.append({"device": self.board.device, "lease": now[0], "holder": now[1],
                         "expires_in": now[2]})
        return {"sessions": rows}

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

    def _revoked(self, device: str, lease: str, reason: str, message: str) -> None:
        if device == self.board.device:
            self._on_revoke(lease, reason, message)

