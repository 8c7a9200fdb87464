"""Every use compassd makes of Twisted's private names, in one place.

Each function or class here says why no public API does its job. All of them work on
Debian 12's Twisted 22.4 and on current releases; ``tests/test_twisted_private.py``
fails, naming the attribute, if a Twisted release renames or changes one, so an upgrade
breaks a test here rather than a daemon in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp

if TYPE_CHECKING:
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.endpoints import SSL4ServerEndpoint

# --- AMP ------------------------------------------------------------------------------


def python_name(wire: bytes) -> str:
    """The Python name AMP gives an argument with wire name C{wire} (C{b"max-lease"} is
    C{max_lease}; a Python keyword is capitalised).

    Why private: AMP converts names with C{amp._wireNameToPythonIdentifier} and has no
    public way to ask; compassd's faster encoder must use exactly the same names."""
    return amp._wireNameToPythonIdentifier(wire)


def send_box(protocol: amp.BoxDispatcher, command: bytes, box: amp.AmpBox,
             requires_answer: bool) -> Deferred[amp.AmpBox] | None:
    """Send an already encoded command box; the Deferred of its answer box, if asked.

    Why private: the public C{callRemote} encodes the arguments itself (compassd encodes
    them faster) and C{callRemoteString} takes text keys, which C{AmpBox} refuses; both
    end in C{BoxDispatcher._sendBoxCommand}."""
    return protocol._sendBoxCommand(command, box, requires_answer)


class ResponderSerialization(amp.AMP):
    """An AMP whose subclass may decode a responder's arguments and encode its answer
    itself: L{serialize_responder} returns the callable AMP should use for a command's
    box, or None for AMP's own.

    Why private: AMP builds that callable in C{CommandLocator._wrapWithSerialization},
    and its public C{locateResponder} finds responders only through the private
    C{_commandDispatch}; overriding this one hook is the smallest contact."""

    def serialize_responder(self, responder: Callable[..., Any], command: type[amp.Command]
                            ) -> Callable[[amp.AmpBox], Deferred[Any]] | None:
        return None

    def _wrapWithSerialization(self, aCallable: Callable[..., Any],
                               command: type[amp.Command]) -> Any:
        wrapped = self.serialize_responder(aCallable, command)
        if wrapped is None:
            return super()._wrapWithSerialization(aCallable, command)
        return wrapped


def box_parser_idle(protocol: amp.BinaryBoxProtocol) -> bool:
    """Whether AMP's box parser of C{protocol} sits between two boxes with nothing
    buffered, so that bytes given to it start a box (and it has not switched to another
    protocol or to TLS).

    Why private: the parser's buffer is C{_unprocessed} and its place in a box the
    C{state} of L{StatefulStringProtocol}; a TLS switch in progress is only
    C{_justStartedTLS}."""
    return (not protocol._unprocessed and protocol.state == "init"
            and protocol.innerProtocol is None and not protocol._justStartedTLS)


def take_unparsed(protocol: amp.BinaryBoxProtocol) -> bytes:
    """The bytes AMP's box parser holds after the last box it parsed, taken from it (it
    holds them while paused).

    Why private: a raw byte run starts right after the box that announces it, and the
    parser (C{IntNStringReceiver}) keeps what followed that box in C{_unprocessed} with
    no public way to take it back."""
    rest: bytes = protocol._unprocessed
    protocol._unprocessed = b""
    return rest


# --- transports -----------------------------------------------------------------------


def stdio_writer(transport: Any) -> Any:
    """The pipe a L{twisted.internet.stdio.StandardIO} writes to, or None.

    Why private: StandardIO keeps its write pipe in C{_writer} and offers no accessor."""
    return getattr(transport, "_writer", None)


def has_unwritten(descriptor: FileDescriptor) -> bool:
    """Whether C{descriptor} buffers bytes it may write now (it is not closing for
    writing after they are gone).

    Why private: C{dataBuffer} is public, but the writes made since the last flush wait
    in C{_tempDataBuffer}, and a half-close in progress is only C{_writeDisconnecting}."""
    if getattr(descriptor, "_writeDisconnecting", False):
        return False
    return bool(descriptor.dataBuffer or getattr(descriptor, "_tempDataBuffer", None))


def forget_lost_notification(protocol: Any) -> None:
    """Keep a L{twisted.application.internet.ClientService} from hearing that the
    connection C{protocol} came from was lost.

    Why private: ClientService counts an attempt whose C{prepareConnection} failed as
    failed already and has no transition for that connection's later loss (it logs a
    NoTransition traceback); its protocol proxy keeps the callback in
    C{_lostNotification}, and nothing public detaches it."""
    if hasattr(protocol, "_lostNotification"):
        protocol._lostNotification = lambda reason: None


# --- TLS and endpoints ------------------------------------------------------------------------


def hostname_verify_callback(options: Any, connection: Any
                             ) -> Callable[[Any, Any, int, int, int], Any] | None:
    """The verify callback with which Twisted's client TLS C{options} check the peer's
    name on C{connection}, or None where Twisted checks it elsewhere.

    Why private: Twisted 24 and later check the name in a per-connection verify callback
    (C{_sslverify._verifyCB}, fed the options' C{_hostnameIsDnsName} and
    C{_hostnameASCII}); a creator that sets its own verify callback to note OpenSSL's
    error must call it, and no public API returns it. On 22.4 the check is an info
    callback on the context, which a verify callback leaves in place: None."""
    from twisted.internet import _sslverify

    make = getattr(_sslverify, "_verifyCB", None)
    if make is None:
        return None
    check: Callable[[Any, Any, int, int, int], Any] = make(
        connection, options._hostnameIsDnsName, options._hostnameASCII)
    return check


def replace_ssl_options(endpoint: SSL4ServerEndpoint,
                        make: Callable[[Any], Any]) -> None:
    """Give an C{ssl:} server endpoint the TLS options C{make(old)} builds from its own.

    Why private: C{serverFromString} builds the endpoint's options from the description
    (C{privateKey=}, C{certKey=}, C{extraCertChain=}) and there is no public way to ask
    them to verify client certificates, nor to read them back; the endpoint keeps them in
    C{_sslContextFactory}."""
    endpoint._sslContextFactory = make(endpoint._sslContextFactory)


def systemd_sockets() -> int | None:
    """How many sockets systemd passed this process as Twisted recorded them when
    C{twisted.internet.endpoints} was imported, or None if Twisted has no record.

    Why private: newer Twisted reads and deletes C{LISTEN_PID}/C{LISTEN_FDS} at that
    import, keeping the result in C{_SystemdParser._sddaemon}; the environment no
    longer says it, and no public API returns that record."""
    from twisted.internet import endpoints

    record: Any = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    try:
        return len(list(record.inheritedDescriptors()))
    except Exception:  # no record, or not the one we know: the environment tells
        return None
