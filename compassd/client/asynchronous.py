"""The asynchronous (Deferred) client of the tracker, for Twisted programs.

    tracker = yield AsyncTracker.connect(reactor, "127.0.0.1", 9190)
    lease = yield tracker.request("npu-x2", wait=300)
    ...                                   # use lease.address and lease.ticket
    yield lease.release()

The blocking API in L{compassd.client.blocking} wraps this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..addresses import (
    DEFAULT_PORT,
    TrackerRing,
    format_address,
    parse_address,
    split_trackers,
)
from ..protocol import accounting as pa
from ..protocol import client_tracker as ct
from ..protocol.errors import NoSuchLease, NoSuchRequest, NotYourLease, UnsupportedVersion
from ..protocol.peer import CompassPeer
from ..tls import ClientTLS
from ._connect import Daemon, connect, info_dict
from .errors import (
    DeviceLost,
    LeaseExpired,
    LeaseLost,
    RequestCancelled,
    RequestFailed,
    RequestWithdrawn,
    TrackerUnreachable,
    WaitTimeout,
)

if TYPE_CHECKING:
    from .model import AsyncModel
    from .session import AsyncSession

TRACKER = Daemon(
    "the tracker", TrackerUnreachable,
    "Is compass-tracker running there? Point --tracker or COMPASS_TRACKER at it.",
)

_REQUEST_ERRORS: dict[str, type[RequestFailed]] = {
    "timed-out": WaitTimeout,
    "cancelled": RequestCancelled,
    "withdrawn": RequestWithdrawn,
}

_LEASE_ERRORS: dict[str, type[LeaseLost]] = {
    "expired": LeaseExpired,
    "device-lost": DeviceLost,
}


@attrs.define(eq=False)
class AsyncLease:
    """A granted device: connect to C{address} and present C{ticket} before C{deadline}.

    C{ended} fires with a L{LeaseLost} (or None when released by us) once the lease is over.
    """

    tracker: AsyncTracker
    id: str
    request: str
    key: str
    device: str
    address: str
    ticket: str
    deadline: float
    info: dict[str, str]
    ended: Deferred[LeaseLost | None] = attrs.Factory(Deferred)
    end_reason: LeaseLost | None = None
    released: bool = False
    secret: str | None = None
    """What re-attaches this lease after a restart of the tracker (from its request)."""
    _session: AsyncSession | None = attrs.field(default=None, init=False, repr=False)
    _session_waiters: list[Deferred[AsyncSession]] | None = attrs.field(
        default=None, init=False, repr=False
    )

    @property
    def active(self) -> bool:
        return not self.ended.called

    @property
    def remaining(self) -> float:
        """Seconds left before the tracker ends this lease."""
        return max(0.0, self.deadline - time.monotonic())

    def release(self) -> Deferred[None]:
        """Give the device back now (closing its session first, if one is open).
        Releasing an ended lease does nothing."""
        if self._session is not None and self._session.active:
            return self.close_session().addCallback(lambda _: self.release())
        if not self.active:
            return succeed(None)
        self.released = True
        d = self.tracker.call(ct.Release, lease=self.id)
        if self._session is not None:
            # The board ends the lease itself when its session closes; our release may
            # arrive after that, which is no error.
            d.addErrback(lambda f: f.trap(NoSuchLease) and None)
        d.addCallback(lambda _: self._end(None))
        return d

    def _end(self, reason: LeaseLost | None) -> None:
        if not self.ended.called:
            self.end_reason = reason
            self.ended.callback(reason)

    # --- the session on the device (compassd.client.session) -------------------------

    def open_session(
        self,
        reactor: Any = None,
        *,
        token: str | None = None,
        user: str | None = None,
        endpoint: str | IStreamClientEndpoint | None = None,
        timeout: float = 10.0,
    ) -> Deferred[AsyncSession]:
        """The session on the leased device, opened with the ticket on first use (later
        calls give the same one). C{reactor} defaults to the tracker's."""
        from .session import AsyncSession

        if self._session is not None:
            return succeed(self._session)
        waiting: Deferred[AsyncSession] = Deferred()
        if self._session_waiters is not None:
            self._session_waiters.append(waiting)
            return waiting
        self._session_waiters = [waiting]
        if reactor is None:
            reactor = self.tracker.reactor
        if reactor is None:
            from twisted.internet import reactor
        d = AsyncSession.open(reactor, self.address, self.ticket, token=token,
                              user=user or self.tracker.user, endpoint=endpoint,
                              timeout=timeout, tls=getattr(self.tracker, "tls", None),
                              device=self.device, expires_in=self.remaining)

        def opened(outcome: Any) -> None:
            waiters, self._session_waiters = self._session_waiters or [], None
            if not isinstance(outcome, Failure):
                self._session = outcome
            for w in waiters:
                if isinstance(outcome, Failure):
                    w.errback(outcome)
                else:
                    w.callback(outcome)

        d.addBoth(opened)
        return waiting

    def close_session(self) -> Deferred[None]:
        """Close the session on the device, if one was opened; the lease stays held."""
        if self._session is None:
            return succeed(None)
        return self._session.close()

    def upload(self, source: Any, remote_name: str | None = None,
               progress: Callable[[int, int], object] | None = None) -> Deferred[str]:
        """L{AsyncSession.upload} on this lease's session (opened on first use)."""
        return self.open_session().addCallback(
            lambda s: s.upload(source, remote_name, progress))

    def download(self, remote: str, local_path: Any = None) -> Deferred[Any]:
        return self.open_session().addCallback(lambda s: s.download(remote, local_path))

    def listdir(self, path: str | None = None) -> Deferred[Any]:
        return self.open_session().addCallback(lambda s: s.listdir(path))

    def remove(self, path: str) -> Deferred[None]:
        return self.open_session().addCallback(lambda s: s.remove(path))

    def load_model(self, path: Any, manifest: Any = None) -> Deferred[AsyncModel]:
        """L{AsyncSession.load_model} on this lease's session (opened on first use)."""
        return self.open_session().addCallback(lambda s: s.load_model(path, manifest))


@attrs.define(eq=False)
class _Pending:
    key: str
    granted: Deferred[AsyncLease]
    on_position: Callable[[int], object] | None
    position: int = 0
    on_why: Callable[[str], object] | None = None
    why: str = ""
    """Why the request is where it is ("behind bob: priority 5 > 1")."""
    secret: str | None = None
    deadline: float | None = None
    """When (time.monotonic) the request's own wait ends."""
    on_notice: Callable[[str], object] | None = None


REATTACH_FOR = 120.0
"""Seconds a client keeps trying to reach a tracker that went away, for a request
without a wait of its own or a lease (the tracker keeps them 60 s by default)."""


def tracker_addresses(host: str | Sequence[str], port: int = DEFAULT_PORT) -> list[str]:
    """The C{HOST:PORT} of each tracker C{host} names: one host (with C{port}) or
    C{HOST:PORT}, a comma list of addresses, or a list of them (each without a port
    takes C{port})."""
    if isinstance(host, str):
        if "," not in host:
            return [format_address(*parse_address(host, port))]
        host = split_trackers(host)
    addresses = [format_address(*parse_address(item.strip(), port)) for item in host]
    if not addresses:
        raise ValueError("No tracker address was given.")
    return addresses


def dial_active(
    reactor: Any, ring: TrackerRing,
    dial: Callable[[str], Deferred[tuple[Any, str, dict[str, Any]]]], budget: float,
) -> Deferred[tuple[Any, str, dict[str, Any]]]:
    """Dial the trackers of C{ring} until one answers as the active tracker: each
    address once per round, plus the redirects standbys give (at most two a round).
    While none is active, rounds are repeated with backoff (0.25 s doubling up to 2 s)
    for C{budget} seconds, if the ring has several addresses or a standby answered;
    then it fails with L{TrackerUnreachable} saying what each one answered."""
    result: Deferred[tuple[Any, str, dict[str, Any]]] = Deferred()
    clock = reactor.seconds if reactor is not None else time.monotonic
    end = clock() + budget
    said: dict[str, str] = {}
    state = {"left": len(ring.addresses), "follows": 2, "delay": 0.25, "standby": False}

    def attempt() -> None:
        if state["left"] <= 0:
            again()
            return
        state["left"] -= 1
        address = ring.next()
        dial(address).addCallbacks(answered, refused, callbackArgs=(address,),
                                   errbackArgs=(address,))

    def answered(found: tuple[Any, str, dict[str, Any]], address: str) -> None:
        peer, _, answer = found
        if answer.get("active") is None:
            ring.answered(address)
            result.callback(found)
            return
        peer.drop()
        state["standby"] = True
        active = answer["active"]
        said[address] = (f"the tracker at {address} is a standby; the active one is"
                         f" {active or 'not known yet (failing over?)'}")
        if ring.redirected(active) is not None and state["follows"] > 0:
            state["follows"] -= 1
            state["left"] += 1
        attempt()

    def refused(failure: Failure, address: str) -> None:
        if not failure.check(TrackerUnreachable):
            result.errback(failure)
            return
        said[address] = failure.getErrorMessage()
        attempt()

    def again() -> None:
        delay = state["delay"]
        if not (ring.several or state["standby"]) or reactor is None \
                or clock() + delay > end:
            if len(said) == 1 and not state["standby"]:
                result.errback(TrackerUnreachable(next(iter(said.values()))))
                return
            reasons = "; ".join(said.values())
            result.errback(TrackerUnreachable(
                f"No tracker answered as the active one ({', '.join(ring.addresses)}):"
                f" {reasons.rstrip('.')}. Is compass-tracker running there? Point"
                " --tracker or COMPASS_TRACKER at the trackers (a:9190,b:9190 for a"
                " standby pair)."))
            return
        state.update(left=len(ring.addresses), follows=2, delay=min(delay * 2, 2.0))
        reactor.callLater(delay, attempt)

    attempt()
    return result


class _TrackerProtocol(CompassPeer):
    """The client's end of a tracker connection: it receives the tracker's notices."""

    def __init__(self) -> None:
        super().__init__()
        self.owner: AsyncTracker | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)

    @ct.Position.responder
    def position(self, request: str, position: int, why: str | None = None) -> dict[str, Any]:
        if self.owner is not None:
            self.owner._position(request, position, why)
        return {}

    @ct.Granted.responder
    def granted(self, **kwargs: Any) -> dict[str, Any]:
        if self.owner is not None:
            self.owner._granted(**kwargs)
        return {}

    @ct.RequestEnded.responder
    def request_ended(self, **kwargs: Any) -> dict[str, Any]:
        if self.owner is not None:
            self.owner._request_ended(**kwargs)
        return {}

    @ct.LeaseEnded.responder
    def lease_ended(self, lease: str, reason: str, message: str) -> dict[str, Any]:
        if self.owner is not None:
            self.owner._lease_ended(lease, reason, message)
        return {}


class AsyncTracker:
    """A connection to compass-tracker, after the hello exchange."""

    def __init__(self, protocol: _TrackerProtocol, address: str, user: str) -> None:
        self._protocol = protocol
        self.address = address
        self.user = user
        self.roles: list[str] = []
        self.reactor: Any = None
        """The reactor it was connected with (sessions on its leases use it too)."""
        self.server_software = ""
        self.features: frozenset[str] = frozenset()
        """What the tracker answers beyond the first protocol (its hello's C{features})."""
        self.tls: ClientTLS | None = None
        """The TLS settings it connected with; sessions on its leases use them too."""
        self.trackers: tuple[str, ...] = (address,)
        """Every tracker this client may dial (several for a standby pair)."""
        self._dial_one: Callable[[str], Deferred[Any]] | None = None
        self.redirected = False
        """Whether a standby redirected this client to the tracker it is connected to."""
        self._pending: dict[str, _Pending] = {}
        self.leases: dict[str, AsyncLease] = {}
        self._redial: Callable[[], Deferred[_TrackerProtocol]] | None = None
        self._closing = False
        self._away_since: float | None = None
        self.on_notice: Callable[[str], object] | None = None
        """Told, in one line, what happened to the connection (the tracker restarted
        and a request or lease was taken back)."""
        protocol.owner = self
        protocol.lost.addCallback(self._lost)

    @classmethod
    def connect(
        cls,
        reactor: Any,
        host: str | Sequence[str] = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        user: str | None = None,
        role: str = "client",
        endpoint: str | IStreamClientEndpoint | None = None,
        timeout: float = 10.0,
        tls: ClientTLS | None = None,
    ) -> Deferred[AsyncTracker]:
        """Connect and say hello. C{endpoint} (a Twisted client endpoint or its string)
        replaces C{host} and C{port}. C{tls} connects with TLS, verifying the tracker's
        certificate against its CA (see L{compassd.tls}); sessions on leases granted
        over this connection then use the same TLS settings with their boards.

        C{host} may name several trackers (a standby pair): a list of C{HOST[:PORT]},
        or one string with commas (C{"a:9190,b:9190"}); C{port} is then the default
        port. The client dials them in turn, follows a standby's redirect to the
        active one (also to one not in the list), and while none answers as active
        tries again with backoff for C{timeout} seconds. When the connection is lost
        later, a client with waiting requests or leases dials them again the same way
        (see L{request})."""
        try:
            addresses = tracker_addresses(host, port)
        except ValueError as e:
            return fail(e)
        ring = TrackerRing(addresses, follow=lambda active: active)

        single = isinstance(host, str) and "," not in host

        def dial(address: str) -> Deferred[tuple[_TrackerProtocol, str, dict[str, Any]]]:
            if single and address == ring.addresses[0]:
                h, p = parse_address(str(host), port)
                where = f"{h}:{p}"
            else:
                (h, p), where = parse_address(address, port), address
            return connect(reactor, TRACKER, _TrackerProtocol, where, host=h, port=p,
                           endpoint=endpoint, tls=tls, timeout=timeout, role=role,
                           token=token, user=user,
                           then=lambda peer, where, answer: (peer, where, answer))

        def greeted(found: tuple[_TrackerProtocol, str, dict[str, Any]]) -> AsyncTracker:
            protocol, where, answer = found
            tracker = cls(protocol, where, answer["user"])
            tracker.reactor = reactor
            tracker.tls = tls
            tracker.trackers = ring.addresses
            tracker.redirected = where not in ring.addresses and \
                where != "{}:{}".format(*parse_address(str(host), port))
            tracker.roles = answer["roles"]
            tracker.server_software = answer["software"]

            def redial() -> Deferred[_TrackerProtocol]:
                d = dial_active(reactor, ring, dial, 0.0)

                def found_again(again: tuple[_TrackerProtocol, str, dict[str, Any]]
                                ) -> _TrackerProtocol:
                    tracker.address = again[1]
                    return again[0]

                return d.addCallback(found_again)

            tracker._redial = redial
            tracker._dial_one = dial
            tracker.features = frozenset(answer.get("features") or ())
            return tracker

        return dial_active(reactor, ring, dial, timeout).addCallback(greeted)

    # --- plumbing ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._protocol.alive

    def call(self, command: type[ct.CompassCommand], **arguments: Any) -> Deferred[Any]:
        """Send a command; fail with L{TrackerUnreachable} if the connection is gone."""
        if not self.connected:
            return fail(
                TrackerUnreachable(f"The connection to the tracker at {self.address} is closed.")
            )
        d = self._protocol.callRemote(command, **arguments)
        return d.addErrback(self._cut_off, command)

    def _cut_off(self, failure: Failure, command: type[ct.CompassCommand]) -> Failure:
        """A call whose connection closed before the answer came fails with
        L{TrackerUnreachable}, a sentence, not Twisted's C{ConnectionLost}."""
        if not failure.check(ConnectionClosed):
            return failure
        name = command.commandName.decode("ascii", "replace")
        return Failure(TrackerUnreachable(
            f"The connection to the tracker at {self.address} was lost before it answered"
            f" {name!r}; connect again and retry (a tracker ends the leases and withdraws"
            " the requests of a client that does not come back)."))

    def close(self) -> Deferred[None]:
        """Close the connection; the tracker withdraws what is still waiting and ends
        the leases still held."""
        self._closing = True
        if self.connected:
            self._protocol.drop()
        return self._protocol.lost

    def _lost(self, _: object) -> None:
        """The connection went: requests and leases with a secret (a tracker with a
        store gave one) wait for the tracker to come back and are re-attached; the rest
        end now."""
        keep = not self._closing and self._redial is not None and self.reactor is not None
        gone = f"The connection to the tracker at {self.address} was lost"
        for request_id, pending in list(self._pending.items()):
            if not (keep and pending.secret):
                del self._pending[request_id]
                pending.granted.errback(
                    TrackerUnreachable(f"{gone} while request {request_id} was waiting.")
                )
        for lease in list(self.leases.values()):
            if not (keep and lease.secret):
                del self.leases[lease.id]
                lease._end(LeaseLost(f"{gone}; lease {lease.id} ended with it.",
                                     lease=lease.id, reason="client-lost"))
        if self._pending or self.leases:
            self._away_since = time.monotonic()
            self._try_again(0.25)

    # --- after the tracker restarted --------------------------------------------------

    def _try_again(self, delay: float) -> None:
        """Dial the tracker again (backoff up to 5 s), until each request's wait or
        lease's deadline (or L{REATTACH_FOR}) is over."""
        now = time.monotonic()
        away = now - (self._away_since or now)
        gone = (f"The tracker at {self.address} went away and did not come back within"
                f" {away:.0f} s")
        for request_id, pending in list(self._pending.items()):
            if (pending.deadline is not None and now >= pending.deadline) or \
                    away >= REATTACH_FOR:
                del self._pending[request_id]
                pending.granted.errback(TrackerUnreachable(
                    f"{gone} while request {request_id} was waiting."))
        for lease in list(self.leases.values()):
            if lease.deadline <= now or away >= REATTACH_FOR:
                del self.leases[lease.id]
                lease._end(LeaseLost(f"{gone}; lease {lease.id} ended with it.",
                                     lease=lease.id, reason="client-lost"))
        if not (self._pending or self.leases) or self._closing:
            return
        assert self._redial is not None
        d = self._redial()

        def failed(_: Failure) -> None:
            self.reactor.callLater(delay, self._try_again, min(delay * 2, 5.0))

        d.addCallbacks(self._reattach, failed)

    def _reattach(self, protocol: _TrackerProtocol) -> None:
        if self._closing:
            protocol.drop()
            return
        self._protocol = protocol
        protocol.owner = self
        protocol.lost.addCallback(self._lost)
        for request_id, pending in list(self._pending.items()):
            d = self.call(ct.Reattach, id=request_id, secret=pending.secret or "")
            d.addCallbacks(self._waiting_again, self._not_taken_back,
                           callbackArgs=(request_id,), errbackArgs=(request_id,))
        for lease in list(self.leases.values()):
            d = self.call(ct.Reattach, id=lease.id, secret=lease.secret or "")
            d.addCallbacks(self._leased_again, self._not_taken_back,
                           callbackArgs=(lease.id,), errbackArgs=(lease.id,))

    def _waiting_again(self, answer: dict[str, Any], request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is None or answer["state"] != "waiting":
            return
        position = answer.get("position") or 0
        pending.position = position
        self._notice(pending.on_notice,
                     f"tracker restarted; still waiting at position {position}")
        if pending.on_position is not None:
            pending.on_position(position)

    def _leased_again(self, answer: dict[str, Any], lease_id: str) -> None:
        self._notice(None, f"tracker restarted; lease {lease_id} goes on")

    def _not_taken_back(self, failure: Failure, ident: str) -> None:
        failure.trap(NoSuchRequest, NotYourLease, TrackerUnreachable)
        why = (f"The tracker at {self.address} restarted and could not take back {ident}:"
               f" {failure.getErrorMessage()}")
        pending = self._pending.pop(ident, None)
        if pending is not None:
            pending.granted.errback(RequestWithdrawn(why, request=ident, key=pending.key))
        lease = self.leases.pop(ident, None)
        if lease is not None:
            lease._end(LeaseLost(why, lease=ident, reason="client-lost"))

    def _notice(self, told: Callable[[str], object] | None, line: str) -> None:
        for listener in (told, self.on_notice):
            if listener is not None:
                listener(line)

    # --- requests ---------------------------------------------------------------------

    def request(
        self,
        key: str,
        priority: int = 1,
        lease: float | None = None,
        wait: float | None = None,
        tags: tuple[str, ...] | list[str] = (),
        on_position: Callable[[int], object] | None = None,
        on_queued: Callable[[str, int, int], object] | None = None,
        on_why: Callable[[str], object] | None = None,
        on_notice: Callable[[str], object] | None = None,
        wait_for_board: bool = False,
    ) -> Deferred[AsyncLease]:
        """Ask for a device of C{key}; the result fires with an L{AsyncLease} when granted.

        A key no device serves fails with L{NoSuchKey} (naming the keys that have
        devices) unless C{wait_for_board}, which waits until a board of C{key} registers.

        C{on_queued(request_id, position, devices)} is called when the tracker has
        queued the request; C{on_position(position)} whenever its place changes;
        C{on_why(sentence)} when the tracker says why the request is where it is
        ("behind carol: they used 0.2 board-hours lately, you used 3.1").
        C{on_notice(line)} when the tracker restarted and the request was taken back
        (C{"tracker restarted; still waiting at position 3"}): a tracker with a store
        keeps waiting requests across a restart, and the client reconnects (with
        backoff, within C{wait}) and re-attaches without failing the request.
        Cancelling the returned Deferred cancels the request at the tracker.
        """
        request_id: list[str] = []

        def cancel(d: Deferred[AsyncLease]) -> None:
            if request_id and request_id[0] in self._pending:
                del self._pending[request_id[0]]
                self.call(ct.Cancel, request=request_id[0]).addErrback(lambda _: None)

        granted: Deferred[AsyncLease] = Deferred(cancel)
        d = self.call(
            ct.Request,
            key=key,
            priority=int(priority),
            lease=None if lease is None else float(lease),
            wait=None if wait is None else float(wait),
            tags=list(tags),
            wait_for_board=True if wait_for_board else None,
        )

        def queued(answer: dict[str, Any]) -> None:
            request_id.append(answer["request"])
            if granted.called:  # cancelled before the answer came
                self.call(ct.Cancel, request=answer["request"]).addErrback(lambda _: None)
                return
            self._pending[answer["request"]] = _Pending(
                key, granted, on_position, answer["position"], on_why,
                answer.get("why") or "", secret=answer.get("secret"),
                deadline=None if wait is None else time.monotonic() + float(wait),
                on_notice=on_notice,
            )
            if on_queued is not None:
                on_queued(answer["request"], answer["position"], answer["devices"])
            if on_why is not None and answer.get("why"):
                on_why(answer["why"])

        def refused(failure: Failure) -> None:
            if not granted.called:
                granted.errback(failure)

        d.addCallbacks(queued, refused)
        return granted

    def _position(self, request: str, position: int, why: str | None = None) -> None:
        pending = self._pending.get(request)
        if pending is not None:
            pending.position = position
            if pending.on_position is not None:
                pending.on_position(position)
            if why and why != pending.why:
                pending.why = why
                if pending.on_why is not None:
                    pending.on_why(why)

    def _granted(self, request: str, lease: str, ticket: str, device: str, address: str,
                 expires_in: float, info: list[str]) -> None:
        pending = self._pending.pop(request, None)
        held = AsyncLease(
            tracker=self,
            id=lease,
            request=request,
            key=pending.key if pending else "",
            device=device,
            address=address,
            ticket=ticket,
            deadline=time.monotonic() + expires_in,
            info=info_dict(info),
            secret=pending.secret if pending else None,
        )
        self.leases[lease] = held
        if pending is None:  # we cancelled it meanwhile: give the device back
            held.release().addErrback(lambda _: None)
            return
        pending.granted.callback(held)

    def _request_ended(self, request: str, reason: str, message: str,
                       position: int | None = None, waited: float | None = None) -> None:
        pending = self._pending.pop(request, None)
        if pending is None:
            return
        error = _REQUEST_ERRORS.get(reason, RequestFailed)
        if error is WaitTimeout:
            message = (
                f"Waited {waited or 0:.0f} s for a device of {pending.key} and none came free"
                f" (request {request} was at position {(position or 0) + 1} in the queue,"
                " counting from 1); try again later, ask for"
                " a longer wait, or check `compass status`."
            )
        pending.granted.errback(
            error(message, request=request, key=pending.key, position=position, waited=waited)
        )

    def _lease_ended(self, lease: str, reason: str, message: str) -> None:
        held = self.leases.pop(lease, None)
        if held is not None:
            session = held._session
            if session is not None and session.active and reason != "released":
                # the tracker ended the lease: the session on the board is over too
                said = message if lease in message else f"Lease {lease} ended: {message}"
                session.end_locally(reason, said)
            error = None if reason == "released" else _LEASE_ERRORS.get(reason, LeaseLost)(
                message, lease=lease, reason=reason
            )
            held._end(error)

    def cancel(self, request: str) -> Deferred[None]:
        """Cancel a waiting request (one's own; an admin may cancel anyone's)."""
        return self.call(ct.Cancel, request=request).addCallback(lambda _: None)

    def release(self, lease: str) -> Deferred[None]:
        held = self.leases.get(lease)
        if held is not None:
            return held.release()
        return self.call(ct.Release, lease=lease).addCallback(lambda _: None)

    # --- administration ---------------------------------------------------------------

    def drain(self, device: str) -> Deferred[None]:
        return self.call(ct.Drain, device=device).addCallback(lambda _: None)

    def undrain(self, device: str) -> Deferred[None]:
        return self.call(ct.Undrain, device=device).addCallback(lambda _: None)

    def kick(self, lease: str, reason: str = "") -> Deferred[None]:
        return self.call(ct.Kick, lease=lease, reason=reason).addCallback(lambda _: None)

    # --- state ------------------------------------------------------------------------

    def devices(self) -> Deferred[list[dict[str, Any]]]:
        """Every device the tracker knows, with its state and holder."""
        return self._pages(ct.ListDevices, "devices", lambda row: {"after": row["name"]})

    def queues(self, waiting_limit: int | None = None) -> Deferred[list[dict[str, Any]]]:
        """Every key with its free and total counts and its waiting requests in order
        (the first C{waiting_limit} of them, or all)."""
        d = self._pages(ct.ListQueues, "queues", lambda row: {"after": row["key"]})

        def add_waiting(queues: list[dict[str, Any]]) -> Deferred[list[dict[str, Any]]]:
            result: Deferred[Any] = succeed(queues)
            for queue in queues:
                result.addCallback(self._then_waiting, queue, waiting_limit)
            return result.addCallback(lambda _: queues)

        return d.addCallback(add_waiting)

    def _then_waiting(self, _: object, queue: dict[str, Any], limit: int | None) -> Deferred[None]:
        return self._waiting(queue, limit)

    def _waiting(self, queue: dict[str, Any], limit: int | None) -> Deferred[None]:
        rows: list[dict[str, Any]] = []
        queue["count"] = queue.pop("waiting")
        queue["waiting"] = rows
        wanted = queue["count"] if limit is None else min(limit, queue["count"])

        def page(_: object = None) -> Deferred[None] | None:
            if len(rows) >= wanted:
                return None
            d = self.call(ct.ListWaiting, key=queue["key"], start=len(rows),
                          limit=min(100, wanted - len(rows)))

            def got(answer: dict[str, Any]) -> Deferred[None] | None:
                rows.extend(answer["waiting"])
                if answer["more"] and answer["waiting"]:
                    return page()
                return None

            return d.addCallback(got)

        return succeed(None).addCallback(page)

    def summary(self, waiting_limit: int | None = None) -> Deferred[dict[str, Any]]:
        """C{{"devices": [...], "queues": [...]}}: what ``compass status`` shows."""
        result: dict[str, Any] = {}
        d = self.devices()
        d.addCallback(lambda devices: result.__setitem__("devices", devices))
        d.addCallback(lambda _: self.queues(waiting_limit))
        d.addCallback(lambda queues: result.__setitem__("queues", queues))
        return d.addCallback(lambda _: result)

    def tracker_states(self) -> Deferred[list[dict[str, str]]]:
        """Which tracker is active and what the others are: a row for the one this
        client is connected to (C{state} C{active}), then one for each other tracker it
        was given, dialled now: C{standby} (with C{active}, the address it redirects
        to), C{active} (a second active tracker: the two do not share a database), or
        C{unreachable} (with C{detail}, why)."""
        rows = [{"address": self.address, "state": "active"}]
        others = [a for a in self.trackers if a != self.address]
        dial = self._dial_one
        result: Deferred[Any] = succeed(None)
        for address in others if dial is not None else []:
            def probe(_: object, address: str = address) -> Deferred[None]:
                assert dial is not None

                def answered(found: tuple[Any, str, dict[str, Any]]) -> None:
                    found[0].drop()
                    active = found[2].get("active")
                    row = {"address": address,
                           "state": "active" if active is None else "standby"}
                    if active is not None:
                        row["active"] = active
                    rows.append(row)

                def failed(failure: Failure) -> None:
                    rows.append({"address": address, "state": "unreachable",
                                 "detail": failure.getErrorMessage()})

                return dial(address).addCallbacks(answered, failed)

            result.addCallback(probe)
        return result.addCallback(lambda _: rows)

    # --- accounting -------------------------------------------------------------------

    def _reports(self, what: str) -> Deferred[Any] | None:
        """A failure if the tracker is too old to answer C{what}, else None."""
        if pa.FEATURE_REPORTS in self.features:
            return None
        return fail(UnsupportedVersion(
            f"The tracker at {self.address} ({self.server_software or 'unknown software'})"
            f" does not answer {what}: it is older than this client. Upgrade"
            " compass-tracker."))

    def usage(self, key: str | None = None, user: str | None = None, by: str = "user",
              since: float | None = None) -> Deferred[dict[str, Any]]:
        """A usage report of the last C{since} seconds (the tracker's default: a week):
        C{{"rows": [...], "half_life": s, "since": s, "history": where from}}; rows as
        L{compassd.protocol.accounting.USAGE_ROW}. A user who is not an admin gets only
        their own rows."""
        refused = self._reports("usage reports")
        if refused is not None:
            return refused
        result: dict[str, Any] = {"rows": []}
        arguments = {"key": key, "user": user, "by": by,
                     "since": None if since is None else float(since)}

        def page(start: int) -> Deferred[dict[str, Any]]:
            def got(answer: dict[str, Any]) -> Any:
                result["rows"] += answer["rows"]
                for field in ("half_life", "since", "history"):
                    result[field] = answer[field]
                if answer["more"] and answer["rows"]:
                    return page(start + len(answer["rows"]))
                return result

            return self.call(pa.Usage, start=start, **arguments).addCallback(got)

        return page(0)

    def reset_usage(self, user: str | None = None) -> Deferred[list[str]]:
        """Admin: forget C{user}'s decayed usage (everyone's with None); the keys where
        there was some."""
        refused = self._reports("usage resets")
        if refused is not None:
            return refused
        return self.call(pa.ResetUsage, user=user).addCallback(lambda a: list(a["keys"]))

    def history(self, user: str | None = None, device: str | None = None,
                key: str | None = None, since: float | None = None, limit: int = 100,
                ) -> Deferred[dict[str, Any]]:
        """The newest C{limit} history rows (ended leases and unserved requests), newest
        first: C{{"rows": [...], "more": bool, "now": the tracker's clock, "history":
        where from}}. A user who is not an admin sees only their own."""
        refused = self._reports("history")
        if refused is not None:
            return refused
        result: dict[str, Any] = {"rows": [], "more": False}
        arguments = {"user": user, "device": device, "key": key,
                     "since": None if since is None else float(since)}

        def page(before: tuple[float, str] | None) -> Deferred[dict[str, Any]]:
            want = min(pa.HISTORY_PAGE, limit - len(result["rows"]))

            def got(answer: dict[str, Any]) -> Any:
                rows = answer["rows"]
                result["rows"] += rows
                result["more"] = answer["more"]
                result["now"], result["history"] = answer["now"], answer["history"]
                if answer["more"] and rows and len(result["rows"]) < limit:
                    return page((rows[-1]["ended_at"], rows[-1]["id"]))
                return result

            cursor = {} if before is None else {"before_at": before[0],
                                                "before_id": before[1]}
            return self.call(pa.History, limit=want, **arguments, **cursor).addCallback(got)

        return page(None)

    def _pages(
        self, command: type[ct.CompassCommand], field: str,
        after: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Deferred[list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []

        def page(arguments: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
            def got(answer: dict[str, Any]) -> Any:
                rows.extend(answer[field])
                if answer["more"] and answer[field]:
                    return page(after(answer[field][-1]))
                return rows

            return self.call(command, **arguments).addCallback(got)

        return page({})
