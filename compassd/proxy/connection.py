"""Every connection ``compass-proxy`` accepts, and the tracker connections it opens.

One listening port serves three kinds of connection, told apart by their first box:

- a **board's control connection** says hello as a board. The proxy opens a tracker
  connection for that board alone, says the board's hello there, and forwards the
  board↔tracker commands both ways (the device's address becomes the proxy's). Either
  connection closing closes the other, so the tracker's view stays right: a board that
  drops is offline at the tracker, and a tracker that drops makes the board reconnect
  and register again.
- a **client** says hello as a client (the proxy answers it) and sends open-session with
  its ticket and device. The proxy checks the ticket with the tracker on the board's own
  tracker link (L{bt.CheckTicket}, which does not use it up): a ticket the tracker does
  not vouch for ends there, and the board never hears of it. Each source address may
  make only so many such checks (L{compassd.ratelimit.OpenLimit}); past them an
  open is refused without asking the tracker. Then the proxy asks that
  device's board (L{px.Dial}) to connect back, opens the session there with the
  client's own hello and ticket, answers the client with the board's answer, and from
  then on relays bytes.
- a board's **data connection** starts with L{px.Attach} naming the channel it was
  asked to open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..protocol import Hello
from ..protocol import board_tracker as bt
from ..protocol import proxy as px
from ..protocol import session as ps
from ..protocol.errors import (
    BadRequest,
    CompassError,
    LimitExceeded,
    NotAuthorized,
    Unavailable,
)
from ..protocol.hello import Greeting, HelloResponder, software_name
from ..protocol.peer import CompassPeer
from ..tls import client_from_string
from .pairing import Channel
from .relay import Relay

if TYPE_CHECKING:
    from .service import ProxyService

log = Logger(namespace="compass.proxy")


class TrackerSide(CompassPeer):
    """The proxy's connection to the tracker on behalf of one board."""

    def __init__(self, board: ProxyConnection) -> None:
        super().__init__()
        self.board = board
        self.greeted = True  # we said hello; the tracker sends none back

    @bt.Revoke.responder
    def revoke(self, device: str, lease: str, reason: str, message: str) -> dict[str, Any]:
        if self.board.alive:
            self.board.callRemote(bt.Revoke, device=device, lease=lease, reason=reason,
                                  message=message)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.board.tracker_lost(reason)


class ProxyConnection(HelloResponder):
    """A connection to the proxy: a board's control or data connection, or a client."""

    daemon = "proxy"
    software = software_name("proxy")
    roles = frozenset({"board", "client"})

    mode: str | None = None
    """C{"board"}, C{"client"} or C{"data"} once the first box has said which."""

    def __init__(self, proxy: ProxyService) -> None:
        super().__init__()
        self.proxy = proxy
        # board
        self.tracker: TrackerSide | None = None
        self.devices: set[str] = set()
        self.data_links: set[ProxyConnection] = set()
        self._idle: IDelayedCall | None = None
        self._idle_timeout = proxy.idle_timeout
        # client
        self.ticket_checked = False
        """Whether the tracker vouched for this client's ticket (its only credential)."""
        self.client_hello: dict[str, Any] = {}
        self.channel: Channel[ProxyConnection, ProxyConnection] | None = None
        self._answer: Deferred[dict[str, Any]] | None = None
        # client and data
        self.relay: Relay | None = None
        self.board: ProxyConnection | None = None

    def describe(self) -> str:
        return f"{self.mode or 'new'} connection from {super().describe()}"

    @property
    def authenticated(self) -> bool:
        """Whether the peer has shown who it is (L{ConnectionGuard}'s caps and hello
        deadline count the others): a board once the tracker answered its hello, a
        board's data connection once it named its channel, a client (whose hello needs
        no token here) once the tracker vouched for its ticket."""
        if self.mode == "client":
            return self.ticket_checked
        return self.mode is not None and self.greeted

    # --- life ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.proxy.connections.add(self)
        self._watch()

    def ampBoxReceived(self, box: Any) -> None:
        # Only a whole box counts as a sign of life: a peer trickling bytes (one a
        # second) does not keep a connection open past its idle timeout.
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        super().ampBoxReceived(box)

    def _watch(self) -> None:
        """Drop a connection that stays silent: a new one until it says what it is, a
        board's control connection past a few missed heartbeats."""
        self._idle = self.proxy.reactor.callLater(self._idle_timeout, self._silent)

    def _unwatch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _silent(self) -> None:
        self._idle = None
        log.warn("{who} was silent for {timeout:g} s; dropping it", who=self.describe(),
                 timeout=self._idle_timeout)
        self.drop(abort=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._unwatch()
        self.proxy.connections.discard(self)
        if self.mode == "board":
            self._board_lost(reason)
        elif self.mode == "client":
            self._client_lost(reason)
        elif self.mode == "data" and self.board is not None:
            self.board.data_links.discard(self)
        if self.relay is not None:
            self.relay.lost(self, reason)

    # --- hello -----------------------------------------------------------------------

    def locateResponder(self, name: bytes) -> Any:
        if name == px.Attach.commandName and self.mode is None:
            self.greeted = True  # the channel it names is its credential
        return super().locateResponder(name)

    def said_hello(self) -> bool:
        return self.mode is not None  # a board's hello is said once it reaches the tracker

    def wrong_role(self, role: str) -> CompassError:
        return BadRequest(
            f"compass-proxy relays boards and their clients; a {role!r} connection has"
            f" nothing to do here: connect to the tracker at {self.proxy.tracker} instead.")

    def welcome(self, greeting: Greeting) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """A client is answered here; a board's hello is the tracker's to answer. With a
        tokens file, a board's token (and a client's, if it gives one) is checked here
        first: nothing is done, and no tracker connection opened, for a caller it does
        not list. A client without a token is let through to open-session, where its
        ticket is its credential."""
        access = self.proxy.access
        if access is not None and (greeting.role != "client" or greeting.token):
            try:
                access.identify(greeting.token, greeting.user, greeting.role)
            except NotAuthorized as e:
                log.warn("refused hello as {role} from {peer}: {why}", role=greeting.role,
                         peer=super().describe(), why=str(e))
                self.proxy.reactor.callLater(0, self.drop)
                raise
        if greeting.role == "board":
            return self._board_hello(greeting)
        self.mode = "client"
        self.client_hello = greeting.arguments()
        return self.welcomed(greeting, greeting.user or "", ["client"])

    # --- a board's control connection ------------------------------------------------

    def _board_hello(self, greeting: Greeting) -> Deferred[dict[str, Any]]:
        self.mode = "board"
        where = self.proxy.tracker
        try:
            endpoint = client_from_string(self.proxy.reactor, where)[0] \
                if isinstance(where, str) else where
        except Exception as e:
            return fail(Unavailable(f"The proxy's tracker endpoint {where} is not usable:"
                                    f" {e}."))
        connecting: Deferred[Any] = endpoint.connect(
            Factory.forProtocol(lambda: TrackerSide(self)))

        def unreachable(failure: Failure) -> Failure:
            return Failure(Unavailable(
                f"The proxy cannot reach the tracker at {where}:"
                f" {failure.getErrorMessage().rstrip('.')}; the board should retry later."))

        def connected(tracker: TrackerSide) -> Deferred[dict[str, Any]]:
            if not self.alive:
                tracker.drop()
                raise Unavailable("The board went away while the proxy reached the tracker.")
            self.tracker = tracker
            return tracker.callRemote(Hello, **greeting.arguments())

        def greeted(answer: dict[str, Any]) -> dict[str, Any]:
            self.greeted = True
            log.info("board {who} ({software}) connected; its tracker link is up",
                     who=super(ProxyConnection, self).describe(),
                     software=greeting.software_text)
            return answer

        def refused(failure: Failure) -> Failure:
            if self.tracker is not None:
                self.tracker.drop()
            return failure

        d: Deferred[Any] = connecting.addCallbacks(connected, unreachable)
        return d.addCallback(greeted).addErrback(refused)

    def tracker_lost(self, reason: Failure) -> None:
        if self.alive:
            log.warn("the tracker closed the link of board {who}; dropping the board so"
                     " it registers again", who=super().describe())
            self.drop()

    def _to_tracker(self, command: type[bt.CompassCommand], **arguments: Any
                    ) -> Deferred[Any]:
        if self.mode != "board":
            raise NotAuthorized(f"Only a board's connection may send {command.__name__}.")
        tracker = self.tracker
        if tracker is None or not tracker.alive:
            raise Unavailable("The proxy lost its link to the tracker for this board;"
                              " reconnect and register again.")
        return tracker.callRemote(command, **arguments).addErrback(self._tracker_gone)

    @staticmethod
    def _tracker_gone(failure: Failure) -> Failure:
        """A command the tracker link lost on the way is unavailable, not an internal error."""
        if failure.check(ConnectionDone, ConnectionLost):
            return Failure(Unavailable(
                "The proxy's link to the tracker closed while it forwarded this command;"
                " reconnect and register again."))
        return failure

    @bt.Register.responder
    def register(self, device: str, key: str, address: str, tags: list[str] | None = None,
                 info: list[str] | None = None, max_lease: float | None = None,
                 healthy: bool | None = None, flavor: str | None = None,
                 reports: bool | None = None, lease: str | None = None,
                 holder: str | None = None, lease_expires_in: float | None = None,
                 ) -> Deferred[dict[str, Any]]:
        advertised = self.proxy.advertised()
        d = self._to_tracker(bt.Register, device=device, key=key, address=advertised,
                             tags=tags, info=info, max_lease=max_lease, healthy=healthy,
                             flavor=flavor, reports=reports, lease=lease, holder=holder,
                             lease_expires_in=lease_expires_in)

        def registered(answer: dict[str, Any]) -> dict[str, Any]:
            self.devices.add(device)
            self.proxy.pairing.add_device(device, self)
            # a few missed heartbeats and the board is taken as gone
            self._idle_timeout = max(3.0 * float(answer["heartbeat"]), 1.0)
            log.info("board {device} ({key}) registered through the proxy as {address}",
                     device=device, key=key, address=advertised)
            return answer

        return d.addCallback(registered)

    @bt.Unregister.responder
    def unregister(self, device: str) -> Deferred[dict[str, Any]]:
        d = self._to_tracker(bt.Unregister, device=device)

        def done(answer: dict[str, Any]) -> dict[str, Any]:
            self.devices.discard(device)
            self.proxy.pairing.remove_device(device, self)
            return answer

        return d.addCallback(done)

    @bt.Heartbeat.responder
    def heartbeat(self, sessions: list[dict[str, Any]] | None = None
                  ) -> Deferred[dict[str, Any]]:
        # one tracker connection per board: its report of sessions passes through as is
        return self._to_tracker(bt.Heartbeat, sessions=sessions)

    @bt.Health.responder
    def health(self, device: str, healthy: bool, detail: str | None = None
               ) -> Deferred[dict[str, Any]]:
        return self._to_tracker(bt.Health, device=device, healthy=healthy, detail=detail)

    @bt.Redeem.responder
    def redeem(self, device: str, ticket: str) -> Deferred[dict[str, Any]]:
        return self._to_tracker(bt.Redeem, device=device, ticket=ticket)

    def check_ticket(self, device: str, ticket: str) -> Deferred[dict[str, Any]]:
        """Ask the tracker, on this board's link, whether C{ticket} is good for
        C{device}, without using it up."""
        return self._to_tracker(bt.CheckTicket, device=device, ticket=ticket)

    @bt.SessionEnded.responder
    def session_ended(self, device: str, lease: str, detail: str | None = None
                      ) -> Deferred[dict[str, Any]]:
        return self._to_tracker(bt.SessionEnded, device=device, lease=lease, detail=detail)

    def _board_lost(self, reason: Failure) -> None:
        names = ", ".join(sorted(self.devices)) or "(nothing registered)"
        log.info("board {devices} disconnected: {why}", devices=names,
                 why=reason.getErrorMessage())
        if self.tracker is not None and self.tracker.alive:
            self.tracker.drop()
        for channel in self.proxy.pairing.board_gone(self):
            channel.waiter.board_failed(Unavailable(
                f"The board {channel.device} disconnected from the proxy before it could"
                " open the session. Request the device again."))
        for link in list(self.data_links):
            link.drop()

    # --- a client --------------------------------------------------------------------

    @ps.OpenSession.responder
    def open_session(self, ticket: str, device: str | None = None
                     ) -> Deferred[dict[str, Any]]:
        if self.mode != "client":
            raise BadRequest("Only a client's connection may open a session.")
        if self.channel is not None or self.relay is not None:
            raise BadRequest("This connection already opened a session; open another"
                             " connection for another lease.")
        channel = self.proxy.open_channel(device, self)
        try:
            self._may_check_ticket(channel.device)
        except LimitExceeded:
            self.proxy.pairing.cancel(channel.ident)
            raise
        self.channel = channel
        self.ticket = ticket
        self._answer = Deferred()
        self._answer_sent = False
        # Everything after this box belongs to the board: stop reading AMP here.
        self.relay = Relay(self, metrics=self.proxy.metrics)
        self.relay.capture(self)
        checking: Deferred[Any] = maybeDeferred(channel.board.check_ticket,
                                                channel.device, ticket)
        checking.addCallbacks(self._ticket_good, self._ticket_refused,
                              callbackArgs=(channel,), errbackArgs=(channel,))
        return self._answer

    def _may_check_ticket(self, device: str) -> None:
        """Count this open against its source address's rate of ticket checks, or refuse
        it with L{LimitExceeded} (logged once per run of refusals from one source)."""
        limit = self.proxy.open_limit
        if limit is None:
            return
        peer: Any = self.transport.getPeer() if self.transport is not None else None
        host = str(getattr(peer, "host", None) or getattr(peer, "name", None) or peer)
        verdict = limit.take(host, self.proxy.reactor.seconds())
        if verdict.allowed:
            return
        if verdict.first_refusal:
            log.warn("refusing session opens from {source}: more than {burst} at once or"
                     " {rate:g} a second (each costs the tracker a ticket check); further"
                     " refusals from it are not logged until it slows down",
                     source=verdict.source, burst=limit.burst, rate=limit.rate)
        raise LimitExceeded(
            f"compass-proxy refused to open a session on board {device} for {host}: more"
            f" than {limit.burst} session opens at once or {limit.rate:g} a second came"
            f" from {verdict.source}, and each costs the tracker a ticket check. Wait"
            f" {max(verdict.retry_after, 0.01):.2f} s and open the session again.")

    def _ticket_good(self, answer: dict[str, Any], channel: Channel[Any, Any]) -> None:
        if self._answer is None or not self.alive:
            return  # gave up meanwhile (went away, or its board did)
        self.ticket_checked = True
        log.info("the tracker vouched for the ticket of {user} ({lease}); asking board"
                 " {device} to connect back for {client}", user=answer["user"],
                 lease=answer["lease"], device=channel.device,
                 client=super().describe())
        dial = channel.board.callRemote(px.Dial, channel=channel.ident)
        dial.addErrback(self._dial_failed, channel)

    def _ticket_refused(self, failure: Failure, channel: Channel[Any, Any]) -> None:
        error = failure.value
        if not isinstance(error, CompassError):
            error = Unavailable(
                f"The proxy could not check the ticket for board {channel.device} with the"
                f" tracker: {failure.getErrorMessage().rstrip('.')}. If the tracker is older"
                " than this proxy (it must know check-ticket), upgrade it; else try again.")
        log.warn("refused a session on board {device} to {client}: {why}; the board was"
                 " not asked to connect back", device=channel.device,
                 client=super().describe(), why=str(error))
        if self.proxy.pairing.cancel(channel.ident) is not None:
            self.board_failed(error)

    def _dial_failed(self, failure: Failure, channel: Channel[Any, Any]) -> None:
        if self.proxy.pairing.cancel(channel.ident) is not None:
            self.board_failed(Unavailable(
                f"The board {channel.device} could not connect back to the proxy:"
                f" {failure.getErrorMessage()}"))

    def board_failed(self, error: Exception) -> None:
        """The session cannot be opened: answer the client with C{error} and hang up."""
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.errback(Failure(error))
        self.drop()

    def board_attached(self, data: ProxyConnection) -> None:
        """The board connected back: open the session there with the client's hello."""
        channel = self.channel
        assert channel is not None and self.relay is not None
        relay = self.relay
        relay.set_board(data)
        if not self.alive:
            data.drop()
            return
        data.relay = relay
        hello = {k: v for k, v in self.client_hello.items() if v is not None}
        d = data.callRemote(Hello, **hello)

        def greeted(_: object) -> Deferred[dict[str, Any]]:
            data.greeted = True
            opened = data.callRemote(ps.OpenSession, ticket=self.ticket,
                                     device=channel.device)
            # Capture at once, while the answer box is being parsed: the board's next
            # bytes are the client's.

            def capture(answer: dict[str, Any]) -> dict[str, Any]:
                relay.capture(data)
                return answer

            return opened.addCallback(capture)

        def opened(answer: dict[str, Any]) -> None:
            pending, self._answer = self._answer, None
            if pending is None or not self.alive:
                data.drop()
                return
            pending.callback(answer)  # written to the client now
            self._unwatch()  # a session may idle: TCP keepalives watch it from now
            relay.join()
            log.info("client {client} paired with board {device}",
                     client=super(ProxyConnection, self).describe(), device=channel.device)

        def refused(failure: Failure) -> None:
            data.drop()
            error = failure.value
            self.board_failed(error if isinstance(error, CompassError) else Unavailable(
                f"Opening the session on board {channel.device} failed: {error}"))

        d.addCallback(greeted).addCallbacks(opened, refused)

    def _client_lost(self, reason: Failure) -> None:
        channel = self.channel
        if channel is not None:
            self.proxy.pairing.cancel(channel.ident)

    # --- a board's data connection -----------------------------------------------------

    @px.Attach.responder
    def attach(self, channel: str) -> dict[str, Any]:
        if self.mode is not None:
            raise BadRequest("Only a new connection may attach to a channel.")
        try:
            entry = self.proxy.pairing.attach(channel)
        except Exception:
            self.after_dispatch(self.drop)
            raise
        self.mode = "data"
        self._unwatch()
        board = entry.board
        self.board = board
        board.data_links.add(self)
        client = entry.waiter
        self.after_dispatch(lambda: client.board_attached(self))
        return {}
