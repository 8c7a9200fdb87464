"""One connection to compass-tracker, whatever its role: identity, hello, idle timers.

A connection says hello as a client, a board or an admin (L{compassd.tracker.access}
decides whether it may); from then on it is the owner of its requests, leases or devices
in the scheduler. A client or admin that holds nothing and stays silent is closed; a board
that misses its heartbeats is dropped. With an audit log, every refused command is
recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..protocol import (
    REDIRECT_VERSION,
    NotAuthorized,
    Unavailable,
)
from ..protocol.hello import Greeting, HelloResponder, software_name
from ..tls import certificate_subject, peer_certificate, verified_by
from .access import ALIASES, Identity
from .records import Effect
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .service import TrackerService
    from .standby import Standby

log = Logger(namespace="compass.tracker")


class TrackerPeer(HelloResponder):
    """One connection to the tracker: who it is, its idle timer, its audited refusals.

    Its owner identity in the scheduler is itself. The responders live by role in
    L{compassd.tracker.clients}, L{compassd.tracker.boards} and L{compassd.tracker.admin};
    L{compassd.tracker.service.TrackerConnection} puts them together.
    """

    daemon = "tracker"
    software = software_name("tracker")

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
        return f"<{type(self).__name__} {self.role} {who} {self.describe()}>"

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
        extra: dict[str, Any] = {}
        if self.identity is None:  # not known yet: one line per address a minute
            left_out = self.tracker.refusal_lines.admit(self._host(), self._now)
            if left_out is None:
                return failure
            if left_out:
                extra["repeated"] = left_out
        self.tracker.record(
            "refused",
            user=self.identity.user if self.identity else None,
            peer=self.describe(),
            reason=str(getattr(error, "description", failure.getErrorMessage())),
            command=name.decode("ascii", "replace"),
            code=code.decode("ascii", "replace") if isinstance(code, bytes) else str(code),
            **extra,
        )
        return failure

    def _host(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "?"))  # type: ignore[union-attr]

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

    def _once_kept(self, answer: dict[str, Any]) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """C{answer}, once the store has committed what the tracker changed so far: the
        caller is told something a restart must keep (a request queued, a lease
        released, a device drained). At once without a store, or while the store is
        failing or stuck (L{Journal.written}); the notices to this connection wait for
        the answer."""
        journal = self.tracker.journal
        kept = journal.written() if journal is not None else None
        if kept is None:
            return answer
        self.answer_first()
        return kept.addCallback(lambda _: answer)

    @property
    def _now(self) -> float:
        return self.tracker.now()

    @property
    def _scheduler(self) -> Scheduler:
        return self.tracker.scheduler


    # --- hello ------------------------------------------------------------------------

    def welcome(self, greeting: Greeting) -> dict[str, Any]:
        """Who the caller is, by its token (L{Access.identify}), and its certificate for a
        board when the tracker has a board CA; then start its idle timer."""
        standby = self.tracker.standby
        if standby is not None:
            return self._redirect(greeting, standby)
        role = ALIASES.get(greeting.role, greeting.role)
        try:
            identity = self.tracker.access.identify(greeting.token, greeting.user, role)
            if role == "board" and self.tracker.board_ca is not None:
                self._check_board_certificate(identity)
        except NotAuthorized as e:
            left_out = self.tracker.refusal_warnings.admit(self._host(), self._now)
            if left_out is not None:
                more = (f" ({left_out} more refused from this address were not logged)"
                        if left_out else "")
                log.warn("refused hello as {role} from {peer}: {why}{more}", role=role,
                         peer=self.describe(), why=str(e), more=more)
            for refused in self.tracker.refusals:
                refused(role)
            raise
        self.identity, self.role = identity, role
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
            software=greeting.software_text,
            version=greeting.version,
        )
        return self.welcomed(greeting, identity.user, identity.roles)

    def _redirect(self, greeting: Greeting, standby: Standby) -> dict[str, Any]:
        """A standby's answer: the active tracker's address to a caller that follows a
        redirect (protocol 2), a sentence (L{Unavailable}) to an older one; either way
        the connection is closed once answered."""
        self.after_dispatch(self.drop)
        if greeting.version < REDIRECT_VERSION:
            raise Unavailable(standby.redirect_sentence())
        return {"version": greeting.version, "user": greeting.user or "", "roles": [],
                "software": self.software, "active": standby.active or ""}

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
