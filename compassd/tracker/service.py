"""compass-tracker's Twisted shell: AMP connections in, scheduler effects out.

L{TrackerService} owns the L{Scheduler} and everything with time or I/O in it: the one
timer for the scheduler's next deadline, the board heartbeat timeouts, the coalesced
queue-position pushes, and the log lines. L{TrackerConnection} is one AMP connection
(a client, a board or an admin); its responders translate commands into scheduler calls
and never decide anything themselves.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from .. import __version__
from ..protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    BadRequest,
    Hello,
    NoSuchKey,
    NotAuthorized,
    UnsupportedVersion,
    choose_version,
)
from ..protocol import board_tracker as bt
from ..protocol import client_tracker as ct
from ..protocol.limits import (
    MAX_PAGE,
    MAX_TAGS,
    check_name,
    check_seconds,
    check_tags,
    check_text,
)
from ..protocol.peer import CompassPeer
from ..tls import certificate_subject, peer_certificate, verified_by
from .access import ALIASES, Access, Identity, TokensFileError, load_tokens
from .audit import AuditLog
from .listing import device_row, queue_row, waiting_row
from .scheduler import (
    DeviceChanged,
    DeviceState,
    Effect,
    Granted,
    LeaseEnded,
    QueueChanged,
    RequestEnded,
    Scheduler,
)

log = Logger(namespace="compass.tracker")


_ROUTINE_STATES = (DeviceState.BUSY, DeviceState.FREE)

PUSH_EVERY_CHANGE_UP_TO = 100
"""Waiting requests at this position or nearer hear of every change of their position;
those further back hear when it changed by a tenth."""


def _line(text: str, **fields: Any) -> None:
    """Log one info line whose text the caller built (with an f-string); the fields stay
    in the event for structured observers. Twisted's format strings are parsed anew for
    every event by the text observer, which cost as much as the rest of a grant."""
    log.info("{line}", line=text, **fields)


@attrs.define(eq=False)
class TrackerService(service.Service):
    """The tracker: a scheduler, the connections that talk to it, and its timers.

    C{heartbeat_timeout}: a board that sends nothing for this long is dropped and its
    devices go offline. C{position_interval}: queue positions are pushed to waiting
    clients at most this often (they are also in every request's answer).
    """

    reactor: IReactorTime
    scheduler: Scheduler = attrs.Factory(Scheduler)
    access: Access = attrs.Factory(Access)
    heartbeat_timeout: float = 15.0
    position_interval: float = 0.5
    idle_timeout: float | None = 600.0
    """A client or admin connection that sends nothing for this long while it has no
    request waiting and holds no lease is closed (None: never)."""
    audit: AuditLog | None = None
    """Where audit events go (L{compassd.tracker.audit}); None for nowhere."""
    board_ca: str | None = None
    """A PEM CA file: the board role then needs a TLS client certificate it signed."""
    tokens_path: str | None = None
    """The tokens file L{reload_access} reads again."""

    _connections: set[Any] = attrs.Factory(set)
    _timer: IDelayedCall | None = None
    _timer_at: float | None = None
    _positions_call: IDelayedCall | None = None
    _dirty_keys: set[str] = attrs.Factory(set)
    _sent_positions: dict[str, int] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        service.Service.__init__(self)

    @property
    def heartbeat_interval(self) -> float:
        """How often boards are told to send a heartbeat: three tries per timeout."""
        return self.heartbeat_timeout / 3

    def now(self) -> float:
        return self.reactor.seconds()

    def record(self, event: str, **fields: Any) -> None:
        """Write an audit event, if there is an audit log."""
        if self.audit is not None:
            self.audit.write(event, **fields)

    def reload_access(self) -> bool:
        """Read the tokens file again (on SIGHUP). Connections already greeted keep the
        identity they have; new hellos use the new table. A file with a mistake leaves
        the old table in force (and says so in the log). Returns whether it changed."""
        if self.audit is not None:
            self.audit.reopen()
        if self.tokens_path is None:
            return False
        try:
            tokens = load_tokens(self.tokens_path)
        except TokensFileError as e:
            log.error("kept the old tokens: {why}", why=str(e))
            self.record("tokens-reload-failed", reason=str(e))
            return False
        self.access = attrs.evolve(self.access, tokens=tokens)
        log.info("reloaded {count} tokens from {path}", count=len(tokens),
                 path=self.tokens_path)
        self.record("tokens-reloaded", reason=f"{len(tokens)} tokens from {self.tokens_path}")
        return True

    def stopService(self) -> Any:
        for call in (self._timer, self._positions_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._positions_call = None
        for connection in list(self._connections):
            connection.drop()
        return service.Service.stopService(self)

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: TrackerConnection(self))

    # --- effects ----------------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        """Carry out what the scheduler decided, then re-arm the deadline timer."""
        # A grant or an ended lease has its own log line; the device's busy/free change
        # that comes with it would only repeat it, and writing a log line costs as much
        # as the rest of a grant.
        routine = {
            effect.lease.device.name
            for effect in effects
            if isinstance(effect, (Granted, LeaseEnded))
        }
        for effect in effects:
            if isinstance(effect, Granted):
                self._granted(effect)
            elif isinstance(effect, RequestEnded):
                self._request_ended(effect)
            elif isinstance(effect, LeaseEnded):
                self._lease_ended(effect)
            elif isinstance(effect, QueueChanged):
                self._dirty_keys.add(effect.key)
            elif isinstance(effect, DeviceChanged) and not (
                effect.device.name in routine and effect.state in _ROUTINE_STATES
            ):
                log.info(
                    "device {device} ({key}) is {state}: {why}",
                    device=effect.device.name,
                    key=effect.device.key,
                    state=effect.state.value,
                    why=effect.why,
                )
        if self._dirty_keys and self._positions_call is None and self.running:
            self._positions_call = self.reactor.callLater(
                self.position_interval, self._push_positions
            )
        self._arm()

    def _granted(self, effect: Granted) -> None:
        lease = effect.lease
        request = lease.request
        self._sent_positions.pop(request.id, None)
        self.record("grant", user=request.user, device=lease.device.name, lease=lease.id,
                    request=request.id, key=request.key)
        waited = lease.granted_at - request.enqueued_at
        _line(
            f"granted {lease.id} on {lease.device.name} to {request.user} for {request.id}"
            f" after waiting {waited:.3f} s; lease {lease.seconds:g} s",
            lease=lease.id,
            device=lease.device.name,
            user=request.user,
            request=request.id,
            waited=waited,
            seconds=lease.seconds,
        )
        self._tell(
            request.owner,
            ct.Granted,
            request=request.id,
            lease=lease.id,
            ticket=lease.ticket,
            device=lease.device.name,
            address=lease.device.address,
            expires_in=lease.deadline - self.now(),
            info=list(lease.device.info),
        )

    def _request_ended(self, effect: RequestEnded) -> None:
        request = effect.request
        self._sent_positions.pop(request.id, None)
        if effect.outcome.value != "granted":
            self.record("request-ended", user=request.user, request=request.id,
                        reason=effect.message, outcome=effect.outcome.value,
                        key=request.key)
        _line(
            f"{request.id} of {request.user} for {request.key} ended {effect.outcome.value}:"
            f" {effect.message}",
            request=request.id,
            user=request.user,
            key=request.key,
            outcome=effect.outcome.value,
            message=effect.message,
        )
        self._tell(
            request.owner,
            ct.RequestEnded,
            request=request.id,
            reason=effect.outcome.value,
            message=effect.message,
            position=effect.position,
            waited=effect.waited,
        )

    def _lease_ended(self, effect: LeaseEnded) -> None:
        lease = effect.lease
        self.record(effect.outcome.value, user=lease.user, device=lease.device.name,
                    lease=lease.id, request=lease.request.id, reason=effect.message)
        _line(
            f"{lease.id} of {lease.user} on {lease.device.name} ended {effect.outcome.value}:"
            f" {effect.message}",
            lease=lease.id,
            user=lease.user,
            device=lease.device.name,
            outcome=effect.outcome.value,
            message=effect.message,
        )
        self._tell(
            lease.owner,
            ct.LeaseEnded,
            lease=lease.id,
            reason=effect.outcome.value,
            message=effect.message,
        )
        if effect.revoke:
            self._tell(
                lease.device.owner,
                bt.Revoke,
                device=lease.device.name,
                lease=lease.id,
                reason=effect.outcome.value,
                message=effect.message,
            )

    def _tell(self, owner: object, command: type[amp.Command], **arguments: Any) -> None:
        """Tell a connection (AMP or TVM) what the scheduler decided about its business."""
        notify = getattr(owner, "notify", None)
        if notify is not None:
            notify(command, arguments)

    def tvm_connections(self) -> list[Any]:
        """The connections speaking TVM's tracker protocol."""
        from .tvm import TvmTrackerConnection

        return [c for c in self._connections if isinstance(c, TvmTrackerConnection)]

    def _arm(self) -> None:
        when = self.scheduler.next_deadline()
        if when is not None and self._timer is not None and self._timer_at is not None \
                and self._timer_at <= when:
            # Armed for now or earlier: a timer that fires before anything is due only
            # re-arms, which is cheaper than cancelling and re-scheduling one per grant.
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._timer_at = None
        if when is not None and self.running:
            self._timer_at = when
            self._timer = self.reactor.callLater(max(0.0, when - self.now()), self._deadline)

    def _deadline(self) -> None:
        self._timer = self._timer_at = None
        self.apply(self.scheduler.advance(self.now()))

    def _push_positions(self) -> None:
        self._positions_call = None
        keys, self._dirty_keys = self._dirty_keys, set()
        for key in keys:
            for request_id, position in self.scheduler.positions(key).items():
                sent = self._sent_positions.get(request_id)
                if sent == position:
                    continue
                if (sent is not None and position > PUSH_EVERY_CHANGE_UP_TO
                        and abs(sent - position) * 10 < sent):
                    # Far back in a long queue, moving up one place is not news: tell
                    # once the position changed by a tenth, so one grant does not cost
                    # a notice to every waiting request.
                    continue
                self._sent_positions[request_id] = position
                request = self.scheduler.requests[request_id]
                self._tell(request.owner, ct.Position, request=request_id, position=position)

    # --- connections ------------------------------------------------------------------

    def connected(self, connection: Any) -> None:
        self._connections.add(connection)

    def disconnected(self, connection: Any, why: str) -> None:
        self._connections.discard(connection)
        now = self.now()
        effects = self.scheduler.client_lost(now, connection)
        effects += self.scheduler.board_lost(now, connection)
        identity = getattr(connection, "identity", None)
        if identity is not None:
            log.info(
                "{role} {user} at {peer} disconnected: {why}",
                role=connection.role,
                user=identity.user,
                peer=connection.describe(),
                why=why,
            )
        self.apply(effects)


def _info_list(info: list[str] | None) -> list[str]:
    info = info or []
    if len(info) > 16:
        raise BadRequest(f"The device info has {len(info)} fields; the limit is 16.")
    for field in info:
        check_text("device info field", field)
        if "=" not in field:
            raise BadRequest(f"The device info field {field!r} is not name=value.")
    return info


class TrackerConnection(CompassPeer):
    """One connection to the tracker. Its owner identity in the scheduler is itself."""

    def __init__(self, tracker: TrackerService) -> None:
        super().__init__()
        self.tracker = tracker
        self.identity: Identity | None = None
        self.role = "peer"
        self._idle: IDelayedCall | None = None

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        who = self.identity.user if self.identity else "?"
        return f"<TrackerConnection {self.role} {who} {self.describe()}>"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.tracker.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        super().connectionLost(reason)
        self.tracker.disconnected(self, reason.getErrorMessage())

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_after)
        super().ampBoxReceived(box)

    @property
    def _idle_after(self) -> float:
        if self.role == "board":
            return self.tracker.heartbeat_timeout
        return self.tracker.idle_timeout or 0.0

    def _unused(self) -> None:
        """A client's idle timer ran out: close it unless it waits or holds a lease."""
        if self.tracker.scheduler.owned_by(self):
            self._idle = self.tracker.reactor.callLater(self._idle_after, self._unused)
            return
        log.info(
            "{role} {user} at {peer} sent nothing for {timeout:g} s and holds nothing;"
            " closing it",
            role=self.role,
            user=self.identity.user if self.identity else "?",
            peer=self.describe(),
            timeout=self._idle_after,
        )
        self.drop()

    def _silent(self) -> None:
        log.warn(
            "board {user} at {peer} sent nothing for {timeout:g} s; dropping it",
            user=self.identity.user if self.identity else "?",
            peer=self.describe(),
            timeout=self.tracker.heartbeat_timeout,
        )
        self.drop(abort=True)

    def locateResponder(self, name: bytes) -> Any:
        inner = super().locateResponder(name)
        if inner is None or self.tracker.audit is None:
            return inner  # refusals are audited only when there is an audit log

        def audited(box: amp.AmpBox) -> Any:
            try:
                return inner(box).addErrback(self._refused, name)
            except amp.RemoteAmpError as e:
                self._refused(Failure(e), name)
                raise

        return audited

    def _refused(self, failure: Failure, name: bytes) -> Failure:
        error = failure.value
        code = getattr(error, "errorCode", b"?")
        self.tracker.record(
            "refused",
            user=self.identity.user if self.identity else None,
            peer=self.describe(),
            reason=str(getattr(error, "description", failure.getErrorMessage())),
            command=name.decode("ascii", "replace"),
            code=code.decode("ascii", "replace") if isinstance(code, bytes) else str(code),
        )
        return failure

    def notify(self, command: type[amp.Command], arguments: dict[str, Any]) -> None:
        """Send a one-way notice, after the box being handled (if any) is answered."""
        if self.alive:
            self.after_dispatch(lambda: self.callRemote(command, **arguments))

    def _require(self, role: str) -> Identity:
        identity = self.identity
        assert identity is not None  # the hello gate guarantees it
        if not identity.may(role) or (role != "admin" and self.role == "board" and role != "board"):
            raise NotAuthorized(f"User {identity.user} may not do that: it needs the {role} role.")
        return identity

    def _apply(self, effects: list[Effect]) -> None:
        self.tracker.apply(effects)

    @property
    def _now(self) -> float:
        return self.tracker.now()

    @property
    def _scheduler(self) -> Scheduler:
        return self.tracker.scheduler

    # --- hello ------------------------------------------------------------------------

    @Hello.responder
    def hello(
        self,
        versions: list[int],
        role: str,
        token: str | None = None,
        user: str | None = None,
        software: str | None = None,
    ) -> dict[str, Any]:
        if self.greeted:
            raise BadRequest("This connection already said hello.")
        role = ALIASES.get(role, role)
        software = check_text("software", software or "unknown software")
        version = choose_version(versions)
        if version is None:
            raise UnsupportedVersion(
                f"This tracker speaks protocol versions {list(SUPPORTED_VERSIONS)};"
                f" you offered {versions}. Upgrade the older side."
            )
        try:
            identity = self.tracker.access.identify(token, user, role)
            if role == "board" and self.tracker.board_ca is not None:
                self._check_board_certificate(identity)
        except NotAuthorized as e:
            log.warn(
                "refused hello as {role} from {peer}: {why}", role=role, peer=self.describe(),
                why=str(e),
            )
            raise
        self.identity, self.role, self.greeted = identity, role, True
        self.tracker.record("hello", user=identity.user, peer=self.describe(), role=role)
        if role == "board":
            self._idle = self.tracker.reactor.callLater(
                self.tracker.heartbeat_timeout, self._silent
            )
        elif self.tracker.idle_timeout is not None:
            self._idle = self.tracker.reactor.callLater(
                self.tracker.idle_timeout, self._unused
            )
        log.info(
            "{role} {user} connected from {peer} ({software}, protocol {version})",
            role=role,
            user=identity.user,
            peer=self.describe(),
            software=software,
            version=version,
        )
        return {
            "version": version,
            "user": identity.user,
            "roles": sorted(identity.roles),
            "software": f"compassd {__version__} tracker (protocol {PROTOCOL_VERSION})",
        }

    def _check_board_certificate(self, identity: Identity) -> None:
        ca = self.tracker.board_ca
        assert ca is not None
        certificate = peer_certificate(self.transport)
        if certificate is None:
            raise NotAuthorized(
                f"This tracker takes boards only over TLS with a client certificate signed"
                f" by its board CA; {identity.user} at {self.describe()} presented none."
                " Give compass-server a tls: --tracker endpoint with certificate= and"
                " privateKey=."
            )
        if not verified_by(certificate, ca):
            raise NotAuthorized(
                f"The client certificate of {identity.user} ({certificate_subject(certificate)})"
                " is not signed by this tracker's board CA."
            )

    # --- clients ----------------------------------------------------------------------

    @ct.Request.responder
    def request(
        self,
        key: str,
        priority: int | None = None,
        lease: float | None = None,
        wait: float | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        identity = self._require("client")
        check_name("device key", key)
        if not identity.may_request(key):
            raise NotAuthorized(f"User {identity.user} may not request devices of {key}.")
        if priority is not None and not -1_000_000 <= priority <= 1_000_000:
            raise BadRequest(f"Priority {priority} is out of range (-1000000 to 1000000).")
        request, effects = self._scheduler.request(
            self._now,
            self,
            identity.user,
            key,
            priority=1 if priority is None else priority,
            tags=check_tags("request", tags or ()),
            lease=check_seconds("lease", lease),
            wait=check_seconds("wait", wait),
        )
        position = 0
        if request.id in self._scheduler.requests:
            position = self._scheduler.position(request.id)
            self.tracker._sent_positions[request.id] = position
            log.info(
                "{request} of {user} for {key} (priority {priority}) waits at position"
                " {position}",
                request=request.id,
                user=identity.user,
                key=key,
                priority=request.priority,
                position=position,
            )
        self._apply(effects)
        return {
            "request": request.id,
            "position": position,
            "devices": self._scheduler.online_count(key),
        }

    @ct.Cancel.responder
    def cancel(self, request: str) -> dict[str, Any]:
        identity = self._require("client")
        self._apply(
            self._scheduler.cancel(self._now, request, identity.user, admin=identity.may("admin"))
        )
        return {}

    @ct.Release.responder
    def release(self, lease: str) -> dict[str, Any]:
        identity = self._require("client")
        self._apply(self._scheduler.release(self._now, lease, identity.user))
        return {}

    @ct.Drain.responder
    def drain(self, device: str) -> dict[str, Any]:
        identity = self._require("admin")
        log.info("admin {user} drains {device}", user=identity.user, device=device)
        self.tracker.record("drain", user=identity.user, device=device)
        self._apply(self._scheduler.set_draining(self._now, device, True))
        return {}

    @ct.Undrain.responder
    def undrain(self, device: str) -> dict[str, Any]:
        identity = self._require("admin")
        log.info("admin {user} undrains {device}", user=identity.user, device=device)
        self.tracker.record("undrain", user=identity.user, device=device)
        self._apply(self._scheduler.set_draining(self._now, device, False))
        return {}

    @ct.Kick.responder
    def kick(self, lease: str, reason: str | None = None) -> dict[str, Any]:
        identity = self._require("admin")
        self._apply(
            self._scheduler.kick(
                self._now, lease, identity.user, check_text("reason", reason or "")
            )
        )
        return {}

    @ct.ListDevices.responder
    def list_devices(self, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        limit = _page_limit(limit)
        names = sorted(n for n in self._scheduler.devices if after is None or n > after)
        now = self._now
        page = [device_row(self._scheduler.devices[n], now) for n in names[:limit]]
        return {"devices": page, "more": len(names) > limit}

    @ct.ListQueues.responder
    def list_queues(self, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        limit = _page_limit(limit)
        keys = [k for k in self._scheduler.keys() if after is None or k > after]
        page = [queue_row(self._scheduler, k) for k in keys[:limit]]
        return {"queues": page, "more": len(keys) > limit}

    @ct.ListWaiting.responder
    def list_waiting(
        self, key: str, start: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        limit = _page_limit(limit)
        start = max(0, start or 0)
        if key not in self._scheduler.keys():
            raise NoSuchKey(f"No device or request of key {key} is known to this tracker.")
        order = self._scheduler.waiting(key)
        now = self._now
        page = [
            waiting_row(r, start + i, now) for i, r in enumerate(order[start : start + limit])
        ]
        return {"waiting": page, "more": len(order) > start + limit}

    # --- boards -----------------------------------------------------------------------

    @bt.Register.responder
    def register(
        self,
        device: str,
        key: str,
        address: str,
        tags: list[str] | None = None,
        info: list[str] | None = None,
        max_lease: float | None = None,
        healthy: bool | None = None,
        flavor: str | None = None,
    ) -> dict[str, Any]:
        identity = self._require("board")
        check_name("device name", device)
        check_name("device key", key)
        check_text("address", address)
        if flavor not in (None, "compassd", "tvm"):
            raise BadRequest(f"Unknown device flavor {flavor!r}; say compassd or tvm.")
        existing = self._scheduler.devices.get(device)
        takeover = (
            existing is not None
            and isinstance(existing.owner, TrackerConnection)
            and existing.owner.identity is not None
            and existing.owner.identity.user == identity.user
        )
        effects = self._scheduler.register(
            self._now,
            self,
            device,
            key,
            address,
            tags=check_tags("device", tags or ()),
            info=_info_list(info),
            max_lease=check_seconds("max_lease", max_lease),
            healthy=True if healthy is None else healthy,
            flavor=flavor or "compassd",
            takeover=takeover,
        )
        if takeover and existing is not None and existing.owner is not self:
            log.info("{device} re-registered by a new connection of {user}; the old one is"
                     " dropped", device=device, user=identity.user)
            old = existing.owner
            assert isinstance(old, TrackerConnection)
            old.drop()
        self._apply(effects)
        log.info(
            "{user} registered {device} in {key} at {address}", user=identity.user,
            device=device, key=key, address=address,
        )
        self.tracker.record("register", user=identity.user, device=device, key=key,
                            address=address, peer=self.describe())
        return {"heartbeat": self.tracker.heartbeat_interval}

    @bt.Unregister.responder
    def unregister(self, device: str) -> dict[str, Any]:
        self._require("board")
        self._apply(self._scheduler.unregister(self._now, self, device))
        return {}

    @bt.Heartbeat.responder
    def heartbeat(self) -> dict[str, Any]:
        return {}

    @bt.Health.responder
    def health(self, device: str, healthy: bool, detail: str | None = None) -> dict[str, Any]:
        self._require("board")
        self._apply(
            self._scheduler.set_health(
                self._now, self, device, healthy, check_text("detail", detail or "")
            )
        )
        return {}

    @bt.Redeem.responder
    def redeem(self, device: str, ticket: str) -> dict[str, Any]:
        self._require("board")
        try:
            lease = self._scheduler.redeem(self._now, self, device, ticket)
        except Exception as e:
            log.warn("{device} refused a ticket: {why}", device=device, why=str(e))
            raise
        log.info("{lease} on {device} claimed by {user}", lease=lease.id, device=device,
                 user=lease.user)
        self.tracker.record("claim", user=lease.user, device=device, lease=lease.id,
                            request=lease.request.id)
        return {
            "lease": lease.id,
            "user": lease.user,
            "expires_in": lease.deadline - self._now,
        }

    @bt.SessionEnded.responder
    def session_ended(self, device: str, lease: str, detail: str | None = None) -> dict[str, Any]:
        self._require("board")
        self._apply(
            self._scheduler.session_ended(
                self._now, self, device, lease, check_text("detail", detail or "")
            )
        )
        return {}


def _page_limit(limit: int | None) -> int:
    if limit is None:
        return MAX_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"A page holds 1 to {MAX_PAGE} entries, not {limit}.")
    return limit


__all__ = ["TrackerService", "TrackerConnection", "MAX_TAGS"]
