"""The client side of a session on a board (``compass-server``): files, models, runs.

Asynchronous, for Twisted programs::

    session = yield AsyncSession.open(reactor, lease.address, lease.ticket)
    model = yield session.load_model("model.onnx")
    outputs = yield model.run({"input": x})
    yield session.close()

Blocking (on the client's private reactor thread), usually through a lease::

    with connect_tracker("127.0.0.1", 9190).request("demo") as session:
        model = session.load_model("model.onnx")
        outputs = model.run(x)

Large values travel as raw byte runs right after the box that announces them (see
L{compassd.protocol.session}): an upload is streamed from the file with flow control and
never read into memory whole; tensors go out as the arrays' own bytes and come back
straight into freshly allocated arrays. Nothing is ever pickled.

Calls on one session run one at a time, in the order they were made: a raw byte run must
not be interleaved with another command's box. Cancelling a call (Ctrl-C in the blocking
API) drops the connection, because a half-sent byte run cannot be taken back; the board
then ends the session.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, TypeVar, Union

import attrs
import numpy as np
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IPullProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import __version__
from ..executor.arena import parse_dtype
from ..protocol import SUPPORTED_VERSIONS, Hello
from ..protocol import session as sp
from ..protocol.errors import (
    ChecksumMismatch,
    CompassError,
    LimitExceeded,
    RunFailed,
    SessionEnded,
    TensorMismatch,
)
from ..protocol.peer import CompassPeer, writes_batched
from ..tls import ClientTLS, TLSFailed, VerifyingCreator, client_from_string
from . import _reactor
from .asynchronous import _info_dict, _login_name, parse_address

T = TypeVar("T")

CHUNK = 256 * 1024
"""Bytes read from a file and written to the transport at a time while uploading."""

BUFFER_CHUNK = 4 << 20
"""Bytes of in-memory tensors copied and written at a time: a few SEND_LIMIT pieces per
pass through the reactor, in memory that is reused from one chunk to the next."""

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
"""What can be uploaded: a local file's path, or the bytes themselves."""

Progress = Callable[[int, int], object]
"""C{progress(done, total)}: bytes moved so far out of the total."""


class BoardUnreachable(CompassError):
    """No connection to the board at the lease's address could be made."""

    code = b"BOARD_UNREACHABLE"


# --- values ------------------------------------------------------------------------------


def _shape_text(shape: Sequence[int]) -> str:
    dims = ["?" if d < 0 else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


_NAMES: dict[Any, str] = {}
"""Dtype names by dtype or by spec text, worked out once: numpy builds C{dtype.name} in
Python on every access."""


def _name_of(dtype: np.dtype) -> str:
    try:
        return _NAMES[dtype]
    except KeyError:
        name = _NAMES[dtype] = dtype.name
        return name


def _dtype_name(text: str) -> str:
    try:
        return _NAMES[text]
    except (KeyError, TypeError):
        pass
    try:
        name = parse_dtype(text).name
    except ValueError:
        return text
    _NAMES[text] = name
    return name


@attrs.frozen
class TensorSpec:
    """A tensor a model takes or gives: a negative dimension in C{shape} means any size."""

    name: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    dtype: str

    def describe(self) -> str:
        """E.g. C{float32 (?, 3, 224, 224)}: '?' is a dimension of any size."""
        return f"{self.dtype} {_shape_text(self.shape)}"

    def check(self, array: np.ndarray, model: str) -> None:
        """Raise L{TensorMismatch} naming this tensor if C{array} does not fit it."""
        if _name_of(array.dtype) != _dtype_name(self.dtype):
            raise TensorMismatch(
                f"Input {self.name!r} of model {model} is {array.dtype.name} but the model"
                f" expects {self.dtype}; convert it with .astype({self.dtype!r})."
            )
        if len(array.shape) != len(self.shape) or any(
            want >= 0 and want != got for want, got in zip(self.shape, array.shape, strict=True)
        ):
            raise TensorMismatch(
                f"Input {self.name!r} of model {model} has shape {_shape_text(array.shape)}"
                f" but the model expects {_shape_text(self.shape)} ('?' is any size);"
                " reshape it or pass the right array."
            )


@attrs.frozen
class RemoteFile:
    """A file (or folder, by C{kind}) in the session directory on the board."""

    name: str
    size: int
    kind: str


def _specs(rows: list[dict[str, Any]]) -> list[TensorSpec]:
    return [TensorSpec(row["name"], row["shape"], row["dtype"]) for row in rows]


def _byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, as a flat memoryview of unsigned bytes."""
    flat: Any = array.reshape(-1).view(np.uint8)
    return memoryview(flat)


def digest(source: Source) -> tuple[int, str]:
    """The size and SHA-256 (hex) of a local file or of bytes, reading a file in chunks."""
    sha = hashlib.sha256()
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        sha.update(view)
        return len(view), sha.hexdigest()
    size = 0
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


# --- sending and receiving byte runs -----------------------------------------------------


@implementer(IPullProducer)
class _RunSender:
    """Writes exactly C{size} bytes of a file or of buffers to a transport, one chunk
    each time the transport asks for more (a pull producer, so TCP's flow control holds
    and nothing is read or copied whole).

    A file that shrank since it was hashed is padded with zeros so the connection stays
    in step; the board then refuses the upload with L{ChecksumMismatch}.
    """

    def __init__(self, transport: Any, source: str | os.PathLike[str] | list[memoryview],
                 size: int, progress: Progress | None) -> None:
        self.transport = transport
        self.size = size
        self.sent = 0
        self.progress = progress
        self.done: Deferred[None] = Deferred()
        self._file: IO[bytes] | None = None
        self._views: list[memoryview] = []
        self._index = 0
        self._offset = 0
        if isinstance(source, list):
            self._views = [v for v in source if len(v)]
        else:
            self._file = open(source, "rb")  # noqa: SIM115 - closed in _finish

    def start(self) -> Deferred[None]:
        if self.size == 0:
            self._finish(None)
        else:
            self.transport.registerProducer(self, False)
        return self.done

    def _take(self, want: int) -> bytes:
        if self._file is not None:
            return self._file.read(want)
        parts = []
        while want and self._index < len(self._views):
            view = self._views[self._index]
            take = min(len(view) - self._offset, want)
            parts.append(view[self._offset : self._offset + take])
            want -= take
            self._offset += take
            if self._offset == len(view):
                self._index += 1
                self._offset = 0
        return b"".join(parts)

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        want = min(CHUNK if self._file is not None else BUFFER_CHUNK, self.size - self.sent)
        chunk = self._take(want)
        if len(chunk) < want:
            chunk += bytes(want - len(chunk))
        self.sent += want
        self.transport.write(chunk)
        if self.progress is not None:
            self.progress(self.sent, self.size)
        if self.sent >= self.size:
            self.transport.unregisterProducer()
            self._finish(None)

    def stopProducing(self) -> None:
        self._finish(Failure(ConnectionClosed("the connection closed during a byte run")))

    def _finish(self, outcome: Failure | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.done.called:
            if outcome is None:
                self.done.callback(None)
            else:
                self.done.errback(outcome)


class _Filler:
    """A raw-run sink that fills a list of byte views in order."""

    def __init__(self, views: list[memoryview]) -> None:
        self.views = [v for v in views if len(v)]
        self.index = 0
        self.offset = 0
        self.received = 0

    def write(self, data: bytes) -> None:
        source = memoryview(data)
        self.received += len(source)
        while len(source) and self.index < len(self.views):
            view = self.views[self.index]
            take = min(len(view) - self.offset, len(source))
            view[self.offset : self.offset + take] = source[:take]
            source = source[take:]
            self.offset += take
            if self.offset == len(view):
                self.index += 1
                self.offset = 0


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

    def __init__(self, protocol: _SessionProtocol, address: str, answer: dict[str, Any]) -> None:
        self._protocol = protocol
        self.address = address
        self.session: str = answer["session"]
        self.lease: str = answer["lease"]
        self.expires_in: float = answer["expires_in"]
        self.backend: str = answer["backend"]
        self.info: dict[str, str] = _info_dict(answer["info"])
        self.max_upload: int = answer["max_upload"]
        self.end_reason: str | None = None
        """The board's reason code from its closing notice (e.g. C{expired}), if any."""
        self._ended: str | None = None
        self._lock = DeferredLock()
        self._sender: _RunSender | None = None
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
    ) -> Deferred[AsyncSession]:
        """Connect to the board at C{address} (C{host:port}), say hello and open the
        session of the lease C{ticket} belongs to. C{endpoint} (a Twisted client endpoint
        or its string) replaces C{address}. C{tls} connects with TLS and verifies the
        board's certificate names the host or IP of C{address} (L{compassd.tls}).
        C{device} names the granted device; a compass-proxy at C{address} needs it."""
        where = address
        target: IStreamClientEndpoint
        creator: VerifyingCreator | None = None
        try:
            if endpoint is None:
                try:
                    host, port = parse_address(address, 0)
                except ValueError as e:
                    return fail(BoardUnreachable(f"The board address {e}"))
                if tls is not None:
                    target, creator = tls.endpoint(reactor, host, port, timeout)
                else:
                    target = HostnameEndpoint(reactor, host, port, timeout=timeout)
            elif isinstance(endpoint, str):
                where = endpoint
                target, creator = client_from_string(reactor, endpoint)
            else:
                target = endpoint
        except (TLSFailed, ValueError) as e:
            return fail(e)

        def unreachable(failure: Failure) -> Failure:
            return Failure(
                BoardUnreachable(
                    f"Cannot reach the board at {where}:"
                    f" {failure.getErrorMessage().rstrip('.')}. Is compass-server running"
                    " there, and is its advertised address reachable from this machine?"
                )
            )

        connecting: Deferred[Any] = target.connect(Factory.forProtocol(_SessionProtocol))
        connecting.addErrback(unreachable)

        def hello(protocol: _SessionProtocol) -> Deferred[AsyncSession]:
            d = protocol.callRemote(
                Hello,
                versions=list(SUPPORTED_VERSIONS),
                role="client",
                token=token,
                user=user or _login_name(),
                software=f"compassd {__version__} client",
            )

            def greeted(_: dict[str, Any]) -> Deferred[dict[str, Any]]:
                protocol.greeted = True
                return protocol.callRemote(sp.OpenSession, ticket=ticket, device=device)

            def refused(failure: Failure) -> Failure:
                protocol.drop()
                explained = creator.explain(failure, f"the board at {where}") \
                    if creator is not None else None
                if explained is not None:
                    return Failure(explained)
                if failure.check(ConnectionClosed):
                    return unreachable(failure)
                return failure

            d.addCallback(greeted)
            d.addCallbacks(lambda answer: cls(protocol, where, answer), refused)
            return d

        return connecting.addCallback(hello)

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

    def _lost_during(self, what: str) -> SessionEnded:
        reason = self._ended or f"The connection to the board at {self.address} was lost."
        return SessionEnded(f"{reason} ({what} did not finish.)")

    def _send_run(self, source: Source | list[memoryview], size: int,
                  progress: Progress | None = None) -> Deferred[None]:
        """Write a raw byte run right after the box just sent; the result fires once
        every byte is written (the next box must not go out before). A small run of
        buffers is written at once; anything else through a L{_RunSender}."""
        if isinstance(source, bytes | bytearray | memoryview):
            source = [memoryview(source).cast("B")]
        if isinstance(source, list) and size <= CHUNK:
            if size:
                self._protocol.transport.write(b"".join(source))  # type: ignore[union-attr]
            if progress is not None:
                progress(size, size)
            return succeed(None)
        sender = _RunSender(self._protocol.transport, source, size, progress)
        self._sender = sender

        def forget(_: object) -> None:
            if self._sender is sender:
                self._sender = None

        return sender.start().addBoth(forget)

    @staticmethod
    def _after_run(answer: Deferred[T], sent: Deferred[None]) -> Deferred[T]:
        """C{answer}'s outcome, once C{sent} has fired too."""
        return answer.addBoth(lambda outcome: sent.addCallback(lambda _: outcome))

    def _operation(self, what: str, work: Callable[[], Deferred[T]]) -> Deferred[T]:
        """Run C{work} when the calls made before it are done; fail with
        L{SessionEnded} if the session is over. Cancelling drops the connection."""
        if self._ended is not None:
            return fail(SessionEnded(self._ended))

        def cancel(_: Deferred[T]) -> None:
            self._protocol.drop(abort=True)

        result: Deferred[T] = Deferred(cancel)

        def start() -> Deferred[T]:
            if self._ended is not None:
                raise SessionEnded(self._ended)
            return work()

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
        directory; the result is the remote name. A file is read twice, in chunks: once
        for its SHA-256 (announced up front, unless C{size} and C{sha256} are given), once
        while sending. C{progress(sent, total)} is called as bytes go out."""
        if remote_name is None:
            if isinstance(source, bytes | bytearray | memoryview):
                return fail(ValueError("Uploading bytes needs a remote_name for them."))
            remote_name = os.path.basename(os.fspath(source))
        try:
            if size is None or sha256 is None:
                size, sha256 = digest(source)
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
        digest_text: str = sha256

        def work() -> Deferred[str]:
            answer = self._protocol.callRemote(sp.Upload, path=name, size=total,
                                               sha256=digest_text)
            sent = self._send_run(source, total, progress)
            return self._after_run(answer, sent).addCallback(lambda _: name)

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
                                              _specs(answer["inputs"]),
                                              _specs(answer["outputs"]))
                )

            return self._operation(f"loading {model!r}", work)

        return d.addCallback(load)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


Inputs = Union[np.ndarray, Sequence[Any], Mapping[str, Any]]
"""Inputs for a run: one array, a list in the model's input order, or a dict by name."""


class AsyncModel:
    """A model loaded in a session: C{name} (the board's name for it), C{path} (its file
    in the session directory), C{inputs} and C{outputs} (L{TensorSpec}s, in model order).
    """

    def __init__(self, session: AsyncSession, name: str, path: str,
                 inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.session = session
        self.name = name
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.last_seconds: float | None = None
        """What the backend took on the board for the latest L{run}."""

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        outs = ", ".join(f"{s.name}: {s.describe()}" for s in self.outputs)
        return f"<AsyncModel {self.name} ({ins}) -> ({outs})>"

    def check(self, inputs: Inputs) -> list[np.ndarray]:
        """The inputs as C-contiguous arrays in model order; L{TensorMismatch} (naming the
        tensor and what was expected) for an unknown name, a missing input, or a wrong
        count, dtype or shape. Nothing is sent."""
        specs = self.inputs
        wanted = ", ".join(f"{s.name}: {s.describe()}" for s in specs) or "none"
        values: list[Any]
        if isinstance(inputs, Mapping):
            known = {s.name for s in specs}
            for key in inputs:
                if key not in known:
                    raise TensorMismatch(
                        f"Model {self.name} has no input named {key!r}; its inputs are"
                        f" {wanted}."
                    )
            for spec in specs:
                if spec.name not in inputs:
                    raise TensorMismatch(
                        f"Input {spec.name!r} of model {self.name} is missing: expected"
                        f" {spec.describe()}."
                    )
            values = [inputs[s.name] for s in specs]
        else:
            if isinstance(inputs, list | tuple):
                values = list(inputs)
            else:
                values = [inputs]
            if len(values) != len(specs):
                raise TensorMismatch(
                    f"Model {self.name} takes {len(specs)} input(s) ({wanted});"
                    f" {len(values)} were given."
                )
        arrays = []
        for spec, value in zip(specs, values, strict=True):
            array = np.asarray(value)
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            spec.check(array, self.name)
            arrays.append(np.ascontiguousarray(array))
        return arrays

    def _send(self, command: type[sp.CompassCommand], what: str, inputs: Inputs,
              arguments: dict[str, Any],
              received: Callable[[dict[str, Any]], Any],
              checked: list[np.ndarray] | None = None) -> Deferred[Any]:
        if checked is not None:
            arrays = checked
        else:
            try:
                arrays = self.check(inputs)
            except TensorMismatch as e:
                return fail(e)
        rows = [
            {"name": spec.name, "dtype": _name_of(a.dtype), "shape": list(a.shape),
             "nbytes": a.nbytes}
            for spec, a in zip(self.inputs, arrays, strict=True)
        ]
        total = sum(a.nbytes for a in arrays)

        def work() -> Deferred[Any]:
            session = self.session
            with writes_batched():  # the box and a small byte run leave in one write
                d = session._protocol.callRemote(command, model=self.name, inputs=rows,
                                                 **arguments)
                sent = session._send_run([_byte_view(a) for a in arrays], total)
            d.addCallback(received)  # at once, so a byte run after the answer is caught
            return session._after_run(d, sent)

        return self.session._operation(what, work)

    def run(self, inputs: Inputs, *, timeout: float | None = None) -> Deferred[list[np.ndarray]]:
        """Run the model once; the result is its outputs as numpy arrays, in model order.
        The input arrays must stay unchanged until the result fires."""
        return self._run(inputs, timeout, None)

    def _run(self, inputs: Inputs, timeout: float | None,
             checked: list[np.ndarray] | None) -> Deferred[list[np.ndarray]]:
        """L{run}; C{checked}: the inputs as L{check} returned them, not checked again."""
        return self._send(sp.Run, f"running model {self.name}", inputs,
                          {"timeout": timeout}, self._receive_outputs, checked)

    def benchmark(self, inputs: Inputs, number: int = 10, repeat: int = 3,
                  warmup: int = 1) -> Deferred[list[float]]:
        """Run the model C{warmup} times, then C{repeat} rounds of C{number} runs on the
        board; the result is each round's mean seconds per run, measured there."""
        return self._send(
            sp.Benchmark, f"benchmarking model {self.name}", inputs,
            {"number": int(number), "repeat": int(repeat), "warmup": int(warmup)},
            lambda answer: list(answer["times"]),
        )

    def _receive_outputs(self, answer: dict[str, Any]) -> Deferred[list[np.ndarray]]:
        self.last_seconds = answer["seconds"]
        rows: list[dict[str, Any]] = answer["outputs"]
        total = sum(int(row["nbytes"]) for row in rows)
        problem = None
        arrays: list[np.ndarray] = []
        for row in rows:
            try:
                dtype = parse_dtype(row["dtype"])
                shape = tuple(int(d) for d in row["shape"])
                if any(d < 0 for d in shape):
                    raise ValueError("a negative dimension")
            except (TypeError, ValueError) as e:
                problem = f"output {row['name']!r} has dtype {row['dtype']!r} or shape" \
                    f" {row['shape']!r} that numpy cannot make ({e})"
                break
            size = math.prod(shape) * dtype.itemsize  # checked before anything is allocated
            if size != row["nbytes"]:
                problem = f"output {row['name']!r} is announced as {row['nbytes']} bytes," \
                    f" but {row['dtype']} {_shape_text(row['shape'])} is {size}"
                break
            arrays.append(np.empty(shape, dtype))
        filler = _Filler([] if problem else [_byte_view(a) for a in arrays])

        def finish(outcome: Any) -> Any:
            if isinstance(outcome, Failure):
                if outcome.check(ConnectionClosed):
                    return Failure(self.session._lost_during(
                        f"receiving the outputs of model {self.name}: {filler.received} of"
                        f" {total} bytes arrived; the run"
                    ))
                return outcome
            if problem is not None:
                raise RunFailed(f"Board {self.session.address} sent a bad answer: {problem}.")
            order = {row["name"]: i for i, row in enumerate(rows)}
            if len(order) == len(rows) and set(order) == {s.name for s in self.outputs}:
                return [arrays[order[s.name]] for s in self.outputs]
            return arrays

        return self.session._protocol.expect_raw(total, filler.write).addBoth(finish)


# --- blocking ----------------------------------------------------------------------------


class Model:
    """A model loaded in a blocking L{Session}; see L{AsyncModel}."""

    def __init__(self, model: AsyncModel) -> None:
        self._model = model

    def __repr__(self) -> str:
        return repr(self._model).replace("<AsyncModel", "<Model", 1)

    name = property(lambda self: self._model.name)
    path = property(lambda self: self._model.path)
    inputs = property(lambda self: list(self._model.inputs))
    outputs = property(lambda self: list(self._model.outputs))
    last_seconds = property(lambda self: self._model.last_seconds)

    def check(self, inputs: Inputs) -> list[np.ndarray]:
        """See L{AsyncModel.check}."""
        return self._model.check(inputs)

    def run(self, inputs: Inputs, *, timeout: float | None = None) -> list[np.ndarray]:
        """Run once; the outputs as numpy arrays in model order."""
        arrays = self._model.check(inputs)  # a mismatch is raised here, nothing crosses
        # threads. The board enforces the timeout (and kills a hung run); the wait here
        # is for it.
        return _reactor.call(self._model._run, inputs, timeout, arrays)

    def benchmark(self, inputs: Inputs, number: int = 10, repeat: int = 3,
                  warmup: int = 1) -> list[float]:
        """Each round's mean seconds per run, measured on the board."""
        self._model.check(inputs)
        return _reactor.call(self._model.benchmark, inputs, number=number, repeat=repeat,
                             warmup=warmup)


class Session:
    """A session on a board, blocking; use it in a C{with} block or call L{close}."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def __repr__(self) -> str:
        return repr(self._session).replace("<AsyncSession", "<Session", 1)

    session = property(lambda self: self._session.session)
    lease = property(lambda self: self._session.lease)
    address = property(lambda self: self._session.address)
    expires_in = property(lambda self: self._session.expires_in)
    backend = property(lambda self: self._session.backend)
    info = property(lambda self: dict(self._session.info))
    max_upload = property(lambda self: self._session.max_upload)
    active = property(lambda self: self._session.active)
    end_message = property(lambda self: self._session.end_message)
    end_reason = property(lambda self: self._session.end_reason)

    def upload(self, source: Source, remote_name: str | None = None,
               progress: Progress | None = None) -> str:
        """Store a local file or bytes in the session directory; returns the remote name.
        C{progress} runs on the client's background thread."""
        size, sha256 = digest(source)  # hashed here, not on the reactor thread
        return _reactor.call(self._session.upload, source, remote_name, progress,
                             size=size, sha256=sha256)

    def download(self, remote: str, local_path: str | os.PathLike[str] | None = None,
                 progress: Progress | None = None) -> Any:
        """The file's bytes, or its local path once written to C{local_path}."""
        return _reactor.call(self._session.download, remote, local_path, progress)

    def listdir(self, path: str | None = None) -> list[RemoteFile]:
        return _reactor.call(self._session.listdir, path)

    def remove(self, path: str) -> None:
        _reactor.call(self._session.remove, path)

    def load_model(self, path: str | os.PathLike[str],
                   manifest: str | os.PathLike[str] | None = None,
                   progress: Callable[[int, int], object] | None = None) -> Model:
        """Upload (if local) and load a model; see L{AsyncSession.load_model}.
        C{progress} runs on the client's background thread."""
        return Model(_reactor.call(self._session.load_model, path, manifest, progress))

    def close(self) -> None:
        _reactor.call(self._session.close)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def connect_session(address: str, ticket: str, token: str | None = None, *,
                    user: str | None = None, endpoint: str | None = None,
                    timeout: float = 10.0, device: str | None = None) -> Session:
    """Open the session of a granted lease on the board at C{address} (blocking).
    C{device} (the lease's device) is needed when C{address} is a compass-proxy."""
    return Session(
        _reactor.call(
            lambda: AsyncSession.open(_reactor.reactor(), address, ticket, token=token,
                                      user=user, endpoint=endpoint, timeout=timeout,
                                      device=device)
        )
    )
