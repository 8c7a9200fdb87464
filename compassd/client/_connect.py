"""How a client reaches a compassd daemon: dial, optionally over TLS, and say hello.

The tracker client (L{AsyncTracker.connect}) and the board session (L{AsyncSession.open})
connect the same way; only what they call the daemon, the error for "cannot reach it"
and what follows the hello differ, and those are L{Daemon} and the C{then} step.
C{timeout} bounds the connect, the TLS handshake and the hello: a daemon that takes the
connection but never answers (a stopped process: the kernel accepts for it) is the
daemon's unreachable error after C{timeout} seconds, not a wait without end. Once the
hello is answered, the daemon decides how long an idle connection may stay.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from .. import __version__
from ..listening import cleartext_host, is_loopback, warn_cleartext
from ..protocol import SUPPORTED_VERSIONS, Hello
from ..protocol.errors import CompassError
from ..protocol.peer import CompassPeer
from ..tls import ClientTLS, TLSFailed, VerifyingCreator, client_from_string

P = TypeVar("P", bound=CompassPeer)
T = TypeVar("T")


@attrs.frozen
class Daemon:
    """What is dialled, for the sentences a failure gets: e.g. C{the tracker}, the
    L{CompassError} for a connection that cannot be made, and what to check then."""

    what: str
    unreachable_error: type[CompassError]
    hint: str

    def silent(self, where: str, timeout: float) -> Failure:
        """The daemon at C{where} took the connection but did not answer the hello within
        C{timeout} seconds, as its unreachable error."""
        return Failure(
            self.unreachable_error(
                f"Cannot reach {self.what} at {where}: it took the connection but did not"
                f" answer within {timeout:g} s (a stopped or overloaded process?)."
                f" {self.hint}"
            )
        )

    def unreachable(self, where: str, failure: Failure) -> Failure:
        """C{failure} (a failed connect, or the connection closed before the hello was
        answered) as the daemon's unreachable error, naming C{where}."""
        return Failure(
            self.unreachable_error(
                f"Cannot reach {self.what} at {where}:"
                f" {failure.getErrorMessage().rstrip('.')}. {self.hint}"
            )
        )


def _warn_if_cleartext(daemon: Daemon, host: str,
                       endpoint: str | IStreamClientEndpoint | None,
                       tls: ClientTLS | None, token: str | None) -> None:
    """One warning per process when a token, or a board's ticket, would go in clear
    text beyond this host."""
    if tls is not None or not (token or "board" in daemon.what):
        return
    if endpoint is None:
        far = None if is_loopback(host) or host == "localhost" else host
    elif isinstance(endpoint, str):
        far = cleartext_host(endpoint)
    else:
        return
    if far is not None:
        what = "Tickets" if "board" in daemon.what and not token else "Tokens"
        warn_cleartext(f"{what} sent by this client", f"to {daemon.what} at {far}",
                       "connect with --ca CA.pem (COMPASS_CA), or tls=True, ca= in the"
                       " client library")


def connect(
    reactor: Any,
    daemon: Daemon,
    protocol: Callable[[], P],
    where: str,
    *,
    host: str,
    port: int,
    endpoint: str | IStreamClientEndpoint | None,
    tls: ClientTLS | None,
    timeout: float,
    role: str,
    token: str | None,
    user: str | None,
    then: Callable[[P, str, dict[str, Any]], T | Deferred[T]],
) -> Deferred[T]:
    """Connect to C{host}:C{port} (with C{tls}, verifying the daemon's certificate), or
    to C{endpoint} (a Twisted client endpoint or its string, which then replaces C{where}
    in messages); say hello; then call C{then(protocol, where, answer)} with the hello's
    answer, whose result is the result. A failure before or in C{then} drops the
    connection; a TLS failure becomes a L{TLSFailed} sentence, and a connect that fails or
    a connection closed during the exchange becomes the daemon's unreachable error, and so
    does a hello not answered within C{timeout} seconds (with a C{reactor} to time it)."""
    target: IStreamClientEndpoint
    creator: VerifyingCreator | None = None
    _warn_if_cleartext(daemon, host, endpoint, tls, token)
    try:
        if endpoint is None and tls is not None:
            target, creator = tls.endpoint(reactor, host, port, timeout)
        elif endpoint is None:
            target = HostnameEndpoint(reactor, host, port, timeout=timeout)
        elif isinstance(endpoint, str):
            where = endpoint
            target, creator = client_from_string(reactor, endpoint)
        else:
            target = endpoint
    except (TLSFailed, ValueError) as e:
        return fail(e)

    connecting: Deferred[Any] = target.connect(Factory.forProtocol(protocol))
    connecting.addErrback(lambda failure: daemon.unreachable(where, failure))

    def hello(peer: P) -> Deferred[T]:
        silent: list[bool] = []

        def too_late() -> None:
            silent.append(True)
            peer.drop(abort=True)

        timer = reactor.callLater(timeout, too_late) if reactor is not None else None

        def answered(outcome: Any) -> Any:
            if timer is not None and timer.active():
                timer.cancel()
            return outcome

        d = peer.callRemote(
            Hello,
            versions=list(SUPPORTED_VERSIONS),
            role=role,
            token=token,
            user=user or login_name(),
            software=f"compassd {__version__} client",
        ).addBoth(answered)

        def greeted(answer: dict[str, Any]) -> T | Deferred[T]:
            peer.greeted = True
            return then(peer, where, answer)

        def refused(failure: Failure) -> Failure:
            peer.drop()
            if silent:
                return daemon.silent(where, timeout)
            explained = creator.explain(failure, f"{daemon.what} at {where}") \
                if creator is not None else None
            if explained is not None:
                return Failure(explained)
            if failure.check(ConnectionClosed):
                return daemon.unreachable(where, failure)
            return failure

        return d.addCallback(greeted).addErrback(refused)

    return connecting.addCallback(hello)


def login_name() -> str:
    """The name a client says hello with when it is given none."""
    try:
        return getpass.getuser()
    except Exception:
        return "anonymous"


def info_dict(info: list[str]) -> dict[str, str]:
    """A daemon's C{key=value} info fields (a grant's, a session's) as a dict."""
    return dict(field.partition("=")[::2] for field in info)
