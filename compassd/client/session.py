"""The client side of a session on a board (``compass-server``): the connection, its
files, and loading models.

Asynchronous, for Twisted programs::

    session = yield AsyncSession.open(reactor, lease.address, lease.ticket)
    model = yield session.load_model("model.onnx")
    outputs = yield model.run({"input": x})
    yield session.close()

The blocking L{compassd.client.blocking.Session} wraps this one; models are
L{compassd.client.model.AsyncModel}s.

Large values travel as raw byte runs right after the box that announces them (see
L{compassd.protocol.session} and L{compassd.client._transfer}): an upload is streamed
from the file with flow control and never read into memory whole; tensors go out as the
arrays' own bytes and come back straight into freshly allocated arrays. Nothing is ever
pickled.

Calls on one session run one at a time, in the order they were made: a raw byte run must
not be interleaved with another command's box. Every call has a deadline: the end of the
lease (the board ends the session then), or the call's own timeout, plus
L{DEADLINE_GRACE}; a board that does not answer by then (stopped, cut off) ends the
session with a sentence that says so instead of a call that never returns. Cancelling a
call (Ctrl-C in the blocking API) drops the connection, because a half-sent byte run
cannot be taken back; the board then ends the session.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import IO, Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredLock, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..addresses import parse_address
from ..hashing import InThread, StreamHash, threads_of
from ..protocol import session as sp
from ..protocol.errors import ChecksumMismatch, CompassError, LimitExceeded, SessionEnded
from ..protocol.peer import CompassPeer
from ..tensors import TensorSpec
from ..tls import ClientTLS
from . import _digests
from ._connect import Daemon, connect, info_dict
from ._transfer import Progress, RunSender, Source, digest, remembered, run_sender
from .model import AsyncModel

T = TypeVar("T")

DEADLINE_GRACE = 3.0
"""Seconds past a call's deadline (the lease's end, or its own timeout) before the client
gives up on the board: time for the board's own "lease expired" notice to arrive."""

HASH_INLINE = 8 << 20
"""Sources up to this many bytes are hashed at once (a few milliseconds); bigger ones
in a thread."""


class BoardUnreachable(CompassError):
    """No connection to the board at the lease's address could be made."""

    code = b"BOARD_UNREACHABLE"


BOARD = Daemon(
    "the board", BoardUnreachable,
    "Is compass-server running there, and is its advertised address reachable from this"
    " machine?",
)


@attrs.frozen
class RemoteFile:
    """A file (or folder, by C{kind}) in the session directory on the board."""

    name: str
    size: int
    kind: str


# --- the connection ----------------------------------------------------------------------


class _SessionProtocol(CompassPeer):
    """The client's end of a board connection: it receives the board's notices."""

    bulk_buffer = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.owner: AsyncSession | None = None
        self.lost_reason: Failure | None = None
        self._waiters: list[Deferred[None]] = []

    def when_lost(self) -> Deferred[None]:
        if self.lost_reason is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        if self.owner is not None:
            self.owner._connection_lost()
        super().connectionLost(reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    @sp.SessionClosing.responder
    def session_closing(self, reason: str, message: str) -> dict[str, Any]:
        if self.owner is not None:
            self.owner._closing(reason, message)
        return {}


class AsyncSession:
    """An open session on a board, after the hello and L{sp.OpenSession} exchange.

    C{session}, C{lease}, C{expires_in} (seconds left when it opened), C{backend},
    C{info} and C{max_upload} (bytes; 0 or less means no limit) are as the board said.
    """

    def __init__(self, protocol: _SessionProtocol, address: str, answer: dict[str, Any],
                 reactor: Any = None) -> None:
        self._protocol = protocol
        self._reactor = reactor
        self._lease_deadline: float | None = (
            reactor.seconds() + float(answer["expires_in"]) if reactor is not None else None)
        """When the lease ends by the reactor's clock (None: no reactor, no deadlines)."""
        self._in_thread: InThread = threads_of(reactor)
        """Where local files are hashed: the reactor's thread pool (none: at once)."""
        self.address = address
        self.session: str = answer["session"]
        self.lease: str = answer["lease"]
        self.expires_in: float = answer["expires_in"]
        self.backend: str = answer["backend"]
        self.info: dict[str, str] = info_dict(answer["info"])
        self.max_upload: int = answer["max_upload"]
        self.features: frozenset[str] = frozenset(answer.get("features") or ())
        """What the board said it can do beyond the first protocol (an older board: none)."""
        self.cached: set[str] = set()
        """Remote names whose last upload the board took from its model cache (nothing
        was sent)."""
        self.end_reason: str | None = None
        """The board's reason code from its closing notice (e.g. C{expired}), if any."""
        self._ended: str | None = None
        self._lock = DeferredLock()
        self._sender: RunSender | None = None
        protocol.owner = self
        if protocol.lost_reason is not None:
            self._connection_lost()

    @classmethod
    def open(
        cls,
        reactor: Any,
        address: str,
        ticket: str,
        *,
        token: str | None = None,
        user: str | None = None,
        endpoint: str | IStreamClientEndpoint | None = None,
        timeout: float = 10.0,
        tls: ClientTLS | None = None,
        device: str | None = None,
        expires_in: float | None = None,
    ) -> Deferred[AsyncSession]:
        """Connect to the board at C{address} (C{host:port}), say hello and open the
        session of the lease C{ticket} belongs to. C{endpoint} (a Twisted client endpoint
        or its string) replaces C{address}. C{tls} connects with TLS and verifies the
        board's certificate names the host or IP of C{address} (L{compassd.tls}).
        C{device} names the granted device; a compass-proxy at C{address} needs it.

        C{timeout} bounds the connect and the hello; C{expires_in}, the seconds left on
        the lease when known (L{AsyncLease.open_session} passes them), bounds the opening
        (plus L{DEADLINE_GRACE}): a board that does not answer by then is
        L{BoardUnreachable}, not a wait without end."""
        host, port = "", 0
        if endpoint is None:
            try:
                host, port = parse_address(address, 0)
            except ValueError as e:
                return fail(BoardUnreachable(f"The board address {e}"))

        def opened(protocol: _SessionProtocol, where: str,
                   _: dict[str, Any]) -> Deferred[AsyncSession]:
            silent: list[bool] = []

            def too_late() -> None:
                silent.append(True)
                protocol.drop(abort=True)

            timer = (reactor.callLater(max(0.0, expires_in) + DEADLINE_GRACE, too_late)
                     if reactor is not None and expires_in is not None else None)

            def answered(outcome: Any) -> Any:
                if timer is not None and timer.active():
                    timer.cancel()
                if silent and isinstance(outcome, Failure):
                    return Failure(BoardUnreachable(
                        f"The board at {where} did not answer the opening of the session"
                        f" within the {expires_in:.0f} s its lease had left (a stopped or"
                        " cut-off board?); the lease ends at its deadline. Request a board"
                        " again."))
                return outcome

            d = protocol.callRemote(sp.OpenSession, ticket=ticket, device=device)
            d.addBoth(answered)
            return d.addCallback(lambda answer: cls(protocol, where, answer, reactor))

        return connect(reactor, BOARD, _SessionProtocol, address, host=host, port=port,
                       endpoint=endpoint, tls=tls, timeout=timeout, role="client",
                       token=token, user=user, then=opened)

    def __repr__(self) -> str:
        state = "open" if self.active else "ended"
        return f"<AsyncSession {self.session} on {self.address} ({self.backend}), {state}>"

    # --- state ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the session still takes commands."""
        return self._ended is None

    @property
    def end_message(self) -> str | None:
        """Why the session is over (the board's words when it said), or None while open."""
        return self._ended

    def _closing(self, reason: str, message: str) -> None:
        if self._ended is None:
            self.end_reason = reason
            self._ended = message or f"The board ended session {self.session} ({reason})."

    def _connection_lost(self) -> None:
        if self._ended is None:
            self._ended = (
                f"The connection to the board at {self.address} was lost; session"
                f" {self.session} is over. Request the board again to go on."
            )
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.stopProducing()

    def end_locally(self, reason: str, message: str) -> None:
        """The session is over without the board saying so (the tracker ended its lease):
        later calls raise L{SessionEnded} with C{message}; the connection is dropped, so
        a board that still runs it ends it too."""
        if self._ended is None:
            self.end_reason = reason
            self._ended = message
        self._protocol.drop(abort=True)

    def _overdue(self, what: str, why: str) -> None:
        """A call passed its deadline with no answer: the board is not answering."""
        self.end_locally(
            "deadline",
            f"The board at {self.address} did not answer {what} by {why}; session"
            f" {self.session} of lease {self.lease} is over. The board may be stopped or"
            " cut off: request a board again.")

    def _deadline(self, what: str, timeout: float | None) -> Any:
        """Arm the deadline of a call starting now (None without a reactor)."""
        if self._reactor is None or self._lease_deadline is None:
            return None
        left = self._lease_deadline - self._reactor.seconds()
        why = f"the deadline of lease {self.lease}"
        if timeout is not None and timeout < left:
            left, why = timeout, f"its own timeout of {timeout:g} s"
        return self._reactor.callLater(max(0.0, left) + DEADLINE_GRACE, self._overdue,
                                       what, why)

    def _lost_during(self, what: str) -> SessionEnded:
        reason = self._ended or f"The connection to the board at {self.address} was lost."
        return SessionEnded(f"{reason} ({what} did not finish.)")

    def _send_run(self, source: Source | list[memoryview], size: int,
                  progress: Progress | None = None) -> Deferred[None]:
        """Write a raw byte run right after the box just sent; the result fires once
        every byte is written (the next box must not go out before). A small run of
        buffers is written at once; anything else through a L{RunSender}."""
        sender = run_sender(self._protocol.transport, source, size, progress)
        if sender is None:
            return succeed(None)
        return self._start_sender(sender)

    def _hasher(self, size: int) -> InThread:
        """Where C{size} bytes are hashed: at once up to L{HASH_INLINE} (a few
        milliseconds), else in the reactor's thread pool."""
        return maybeDeferred if size <= HASH_INLINE else self._in_thread

    def _sender_for(self, source: Source, size: int, progress: Progress | None,
                    hashing: StreamHash) -> RunSender:
        sender = run_sender(self._protocol.transport, source, size, progress, hashing)
        assert sender is not None
        return sender

    def _start_sender(self, sender: RunSender) -> Deferred[None]:
        self._sender = sender

        def forget(_: object) -> None:
            if self._sender is sender:
                self._sender = None

        return sender.start().addBoth(forget)

    @staticmethod
    def _after_run(answer: Deferred[T], sent: Deferred[None]) -> Deferred[T]:
        """C{answer}'s outcome, once C{sent} has fired too (a small run's bytes are
        written at once: nothing to wait for)."""
        if sent.called and not isinstance(sent.result, Failure):
            return answer
        return answer.addBoth(lambda outcome: sent.addCallback(lambda _: outcome))

    def _operation(self, what: str, work: Callable[[], Deferred[T]],
                   timeout: float | None = None) -> Deferred[T]:
        """Run C{work} when the calls made before it are done; fail with
        L{SessionEnded} if the session is over, or once its deadline passed (the lease's
        end, or C{timeout} seconds, plus L{DEADLINE_GRACE}) without an answer.
        Cancelling drops the connection."""
        if self._ended is not None:
            return fail(SessionEnded(self._ended))

        def cancel(_: Deferred[T]) -> None:
            self._protocol.drop(abort=True)

        result: Deferred[T] = Deferred(cancel)

        def start() -> Deferred[T]:
            if self._ended is not None:
                raise SessionEnded(self._ended)
            timer = self._deadline(what, timeout)

            def disarm(outcome: Any) -> Any:
                if timer is not None and timer.active():
                    timer.cancel()
                return outcome

            try:
                d = work()
            except BaseException:
                disarm(None)
                raise
            return d.addBoth(disarm)

        def translate(failure: Failure) -> Failure:
            if failure.check(ConnectionClosed):
                return Failure(self._lost_during(what))
            return failure

        def deliver(outcome: Any) -> None:
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        d: Deferred[Any] = self._lock.run(start)
        d.addErrback(translate)
        d.addBoth(deliver)
        return result

    def close(self) -> Deferred[None]:
        """End the session (the board frees itself) and drop the connection. Closing an
        ended session only makes sure the connection is gone."""
        if self._ended is not None:
            self._protocol.drop()
            return self._protocol.when_lost()
        self._ended = f"Session {self.session} was closed; request the board again to go on."

        def say_goodbye() -> Deferred[Any]:
            if not self._protocol.alive:
                return succeed(None)
            return self._protocol.callRemote(sp.CloseSession)

        d: Deferred[Any] = self._lock.run(say_goodbye)
        d.addErrback(lambda _: None)  # the connection goes either way

        def drop(_: object) -> Deferred[None]:
            self._protocol.drop()
            return self._protocol.when_lost()

        return d.addCallback(drop)

    # --- files ---------------------------------------------------------------------------

    def upload(
        self,
        source: Source,
        remote_name: str | None = None,
        progress: Progress | None = None,
        *,
        size: int | None = None,
        sha256: str | None = None,
    ) -> Deferred[str]:
        """Store a local file (its path) or bytes as C{remote_name} in the session
        directory; the result is the remote name. A file is never read into memory
        whole; C{progress(sent, total)} is called as bytes go out.

        When the file's SHA-256 is known (C{size} and C{sha256} given, or an unchanged
        file hashed before, by this process or another: L{compassd.client._digests}) and
        the board has a model cache holding that content, it is stored without a byte
        sent (the name is then in L{cached}). Otherwise a board that takes the digest
        after the bytes gets the file hashed while it is sent (in a thread), and the
        digest is remembered for next time; an older board gets the file hashed first
        (in a thread) and then sent."""
        if remote_name is None:
            if isinstance(source, bytes | bytearray | memoryview):
                return fail(ValueError("Uploading bytes needs a remote_name for them."))
            remote_name = os.path.basename(os.fspath(source))
        local = None if isinstance(source, bytes | bytearray | memoryview) \
            else os.fspath(source)
        try:
            if size is None or sha256 is None:
                known = None if local is None else remembered(local)
                if known is not None:
                    size, sha256 = known
                elif isinstance(source, bytes | bytearray | memoryview):
                    size, sha256 = len(memoryview(source).cast("B")), None  # hashed below
                else:
                    assert local is not None
                    size, sha256 = os.stat(local).st_size, None
        except OSError as e:
            return fail(e)
        if 0 < self.max_upload < size:
            return fail(
                LimitExceeded(
                    f"{remote_name!r} is {size} bytes; board {self.address} takes uploads of"
                    f" at most {self.max_upload} bytes."
                )
            )
        name: str = remote_name
        total: int = size

        def send(digest_text: str) -> Deferred[str]:
            self.cached.discard(name)
            answer = self._protocol.callRemote(sp.Upload, path=name, size=total,
                                               sha256=digest_text)
            sent = self._send_run(source, total, progress)
            return self._after_run(answer, sent).addCallback(lambda _: name)

        def stream(local: str) -> Deferred[str]:
            """Send the file while it is hashed; its digest follows the bytes."""
            self.cached.discard(name)
            key = _digests.file_key(local)
            answer = self._protocol.callRemote(sp.UploadDigestAfter, path=name, size=total)
            sender = self._sender_for(local, total, progress, StreamHash(self._hasher(total)))
            sent = self._start_sender(sender)

            def stored(_: object) -> str:
                if sender.sha256 is not None and _digests.file_key(local) == key:
                    _digests.remember(key, sender.sha256)
                return name

            def refused(failure: Failure) -> Failure:
                if failure.check(ChecksumMismatch) and sender.changed:
                    return Failure(ChecksumMismatch(
                        f"{local!r} changed while it was sent to board {self.address};"
                        f" nothing was stored as {name!r}. Upload it again once it is"
                        " written."))
                return failure

            return self._after_run(answer, sent).addCallbacks(stored, refused)

        def with_digest(digest_text: str) -> Deferred[str]:
            if sp.FEATURE_CACHE not in self.features:
                return send(digest_text)
            asked = self._protocol.callRemote(sp.UseCached, path=name, size=total,
                                              sha256=digest_text)

            def answered(answer: dict[str, Any]) -> str | Deferred[str]:
                if not answer["stored"]:
                    return send(digest_text)
                self.cached.add(name)
                if progress is not None:
                    progress(total, total)
                return name

            return asked.addCallback(answered)

        def work() -> Deferred[str]:
            if sha256 is not None:
                return with_digest(sha256)
            if local is not None and sp.FEATURE_DIGEST_AFTER in self.features:
                return stream(local)
            hashing: Deferred[tuple[int, str]] = self._hasher(total)(digest, source)
            return hashing.addCallback(lambda known: with_digest(known[1]))

        return self._operation(f"uploading {name!r}", work)

    def download(
        self,
        remote: str,
        local_path: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> Deferred[Any]:
        """Fetch C{remote} from the session directory: as bytes, or into C{local_path}
        (a folder gets the remote file's name), whose path is then the result. The file
        appears only once all of it arrived and its SHA-256 matched (L{ChecksumMismatch})."""
        target: str | None = None
        if local_path is not None:
            target = os.fspath(local_path)
            if os.path.isdir(target):
                target = os.path.join(target, os.path.basename(remote))

        def work() -> Deferred[Any]:
            d = self._protocol.callRemote(sp.Download, path=remote)
            d.addCallback(receive)
            return d

        def receive(answer: dict[str, Any]) -> Deferred[Any]:
            size: int = answer["size"]
            expected: str = answer["sha256"]
            sha = hashlib.sha256()
            got = [0]
            chunks: list[bytes] = []
            out: IO[bytes] | None = None
            if target is not None:
                out = open(target + ".part", "wb")  # noqa: SIM115 - closed in finish

            def sink(data: bytes) -> None:
                sha.update(data)
                got[0] += len(data)
                if out is not None:
                    out.write(data)
                else:
                    chunks.append(bytes(data))
                if progress is not None:
                    progress(got[0], size)

            def finish(outcome: Any) -> Any:
                if out is not None:
                    out.close()
                if isinstance(outcome, Failure):
                    if target is not None:
                        _remove_quietly(target + ".part")
                    if outcome.check(ConnectionClosed):
                        return Failure(
                            self._lost_during(
                                f"downloading {remote!r}: {got[0]} of {size} bytes arrived;"
                                " the download"
                            )
                        )
                    return outcome
                if sha.hexdigest() != expected:
                    if target is not None:
                        _remove_quietly(target + ".part")
                    raise ChecksumMismatch(
                        f"The {size} bytes of {remote!r} from board {self.address} have"
                        f" SHA-256 {sha.hexdigest()}, not the {expected} the board announced;"
                        " download it again."
                    )
                if target is not None:
                    os.replace(target + ".part", target)
                    return target
                return b"".join(chunks)

            return self._protocol.expect_raw(size, sink).addBoth(finish)

        return self._operation(f"downloading {remote!r}", work)

    def listdir(self, path: str | None = None) -> Deferred[list[RemoteFile]]:
        """The files in the session directory (or in its folder C{path})."""

        def work() -> Deferred[list[RemoteFile]]:
            d = self._protocol.callRemote(sp.ListFiles, path=path)
            return d.addCallback(
                lambda answer: [RemoteFile(f["name"], f["size"], f["kind"])
                                for f in answer["files"]]
            )

        return self._operation("listing files", work)

    def remove(self, path: str) -> Deferred[None]:
        """Delete the file C{path} from the session directory."""

        def work() -> Deferred[None]:
            d = self._protocol.callRemote(sp.RemoveFile, path=path)
            return d.addCallback(lambda _: None)

        return self._operation(f"removing {path!r}", work)

    # --- models --------------------------------------------------------------------------

    def load_model(
        self, path: str | os.PathLike[str], manifest: str | os.PathLike[str] | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> Deferred[AsyncModel]:
        """Load a model into the board's executor. A C{path} (or C{manifest}) that is a
        local file is uploaded first under its base name (C{progress(done, total)} hears
        how the model's upload goes); anything else names a file already in the session
        directory."""
        d: Deferred[Any] = succeed(None)
        names: dict[str, str | None] = {"model": os.fspath(path), "manifest": None}
        if manifest is not None:
            names["manifest"] = os.fspath(manifest)
        for field, local in list(names.items()):
            if local is not None and os.path.isfile(local):

                def send(_: object, field: str = field, local: str = local) -> Deferred[None]:
                    def uploaded(remote: str) -> None:
                        names[field] = remote

                    return self.upload(
                        local, progress=progress if field == "model" else None
                    ).addCallback(uploaded)

                d.addCallback(send)

        def load(_: object) -> Deferred[AsyncModel]:
            model = names["model"]
            assert model is not None

            def work() -> Deferred[AsyncModel]:
                call = self._protocol.callRemote(sp.LoadModel, path=model,
                                                 manifest=names["manifest"])
                return call.addCallback(
                    lambda answer: AsyncModel(self, answer["model"], model,
                                              TensorSpec.from_rows(answer["inputs"]),
                                              TensorSpec.from_rows(answer["outputs"]))
                )

            return self._operation(f"loading {model!r}", work)

        return d.addCallback(load)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass

