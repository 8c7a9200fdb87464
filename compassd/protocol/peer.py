"""The AMP connection every compassd daemon and client builds on.

It adds to Twisted's AMP what compassd promises on every link:

- no command but L{Hello} is served before the hello exchange (L{HelloRequired});
- a responder never drops the connection by accident: malformed arguments are answered
  with L{BadRequest} and an unexpected exception with L{InternalError} (logged with its
  traceback here), instead of AMP's default of closing the connection;
- each box is written in one piece with TCP_NODELAY, so a reply costs one round trip;
- work a responder queues for after its answer (L{CompassPeer.after_dispatch}) runs once the
  answer is written, so a pushed notice never overtakes the answer it follows; a responder
  whose answer comes later (a Deferred) may hold the connection's notices until it is
  written (L{CompassPeer.answer_first});
- raw byte runs (L{CompassPeer.expect_raw}): large values (models, tensors) travel as
  plain bytes between two boxes instead of as 64 KiB AMP values, at the speed of the
  socket, with TCP's own flow control; the boxes around them carry sizes and checksums;
- every box is bounded before it is read (L{BoxLimits}): a peer announcing a value that
  would take a box past its byte or key limit is hung up on, with one log line, before
  the value's bytes are read; before hello the limits are those of a hello.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from .._twisted_private import (
    ResponderSerialization,
    box_parser_idle,
    has_unwritten,
    python_name,
    send_box,
    stdio_writer,
    take_unparsed,
)
from ._command import Hello
from .errors import BadRequest, HelloRequired, InternalError

log = Logger()


@attrs.frozen
class BoxLimits:
    """How large one box may grow: bytes of its keys and values together, and keys.

    AMP itself bounds a key (255 bytes) and a value (65,535 bytes) but not a box: a peer
    that streams distinct keys and never ends its box grows the parser's dictionary
    without end. The largest box compassd sends holds a few full values (a listing's page
    fits in one), and no command has more than a dozen keys.
    """

    max_bytes: int = 256 << 10
    max_keys: int = 64

    def allows(self, keys: int, size: int) -> bool:
        return keys <= self.max_keys and size <= self.max_bytes


BOX_LIMITS = BoxLimits()
"""The limits on a box from a peer that has said hello."""

HELLO_LIMITS = BoxLimits(max_bytes=16 << 10, max_keys=16)
"""The limits on a box before hello: a hello (versions, a token, names) fits easily."""

_MAX_KEY = 0xFF
_MAX_VALUE = 0xFFFF
"""The longest key and value AMP allows."""


class _Schema:
    """A command's argument (or response) list, prepared once.

    Twisted's AMP recomputes every Python name from its wire name, copies the values and
    builds a L{amp.Command} for each box it encodes or decodes; on a tracker that sends a
    few notices per grant that was most of the cost of a grant. This does the same
    conversions with the names worked out once. Lists with an argument type that
    overrides how it reads or writes a box are left to AMP (L{_schema} returns None).
    """

    __slots__ = ("fields", "names", "required")

    def __init__(self, arglist: list[tuple[bytes, amp.Argument]]) -> None:
        self.fields = [(wire, python_name(wire), _fast(arg)) for wire, arg in arglist]
        self.names = frozenset(name for _, name, _ in self.fields)
        self.required = frozenset(name for _, name, arg in self.fields if not arg.optional)

    def encode(self, objects: dict[str, Any], box: Any, proto: amp.AMP) -> Any:
        for wire, name, arg in self.fields:
            value = objects.get(name)
            if value is None:
                if arg.optional:
                    continue
                if name not in objects:
                    raise KeyError(name)
            box[wire] = arg.toStringProto(value, proto)
        return box

    def decode(self, box: Any, proto: amp.AMP) -> dict[str, Any]:
        objects: dict[str, Any] = {}
        for wire, name, arg in self.fields:
            text = box.get(wire)
            if text is None:
                if not arg.optional:
                    raise KeyError(wire)
                objects[name] = None
            else:
                objects[name] = arg.fromStringProto(text, proto)
        return objects


_PACK16 = struct.Struct("!H").pack


def _serialize(box: dict[bytes, Any]) -> bytes:
    """C{amp.AmpBox(box).serialize()}, for the boxes of an L{amp.AmpList}."""
    parts: list[bytes] = []
    for key, value in sorted(box.items()):
        if type(key) is not bytes or type(value) is not bytes or len(key) > 0xFF \
                or len(value) > 0xFFFF:
            return amp.AmpBox(box).serialize()  # raises what AMP raises
        parts += (_PACK16(len(key)), key, _PACK16(len(value)), value)
    parts.append(b"\0\0")
    return b"".join(parts)


def _strings(data: bytes) -> list[bytes] | None:
    """The 16-bit length-prefixed strings that make up C{data}; None unless it is exactly
    such strings (AMP's own parser then decides what an odd value means)."""
    strings = []
    at, end = 0, len(data)
    while at < end:
        if at + 2 > end:
            return None
        size = (data[at] << 8) | data[at + 1]
        at += 2 + size
        if at > end:
            return None
        strings.append(data[at - size:at])
    return strings


def _boxes(data: bytes) -> list[dict[bytes, bytes]] | None:
    """The boxes of an L{amp.AmpList} value; None unless it is exactly complete boxes of
    valid keys (AMP's own parser then decides what an odd value means)."""
    strings = _strings(data)
    if strings is None:
        return None
    boxes = []
    box: dict[bytes, bytes] = {}
    key: bytes | None = None
    for text in strings:
        if key is not None:
            box[key] = text
            key = None
        elif not text:
            if not box:
                return None
            boxes.append(box)
            box = {}
        elif len(text) > 0xFF:
            return None
        else:
            key = text
    if box or key is not None:
        return None
    return boxes


class _FastList(amp.Argument):
    """An L{amp.AmpList} of plain arguments with the same wire form, without building a
    parser protocol per value and a copy of every row."""

    def __init__(self, original: amp.AmpList) -> None:
        super().__init__(original.optional)
        self.original = original
        self.rows = _Schema(original.subargs)

    def fromStringProto(self, inString: bytes, proto: Any) -> list[dict[str, Any]]:
        boxes = _boxes(inString)
        if boxes is None:
            return self.original.fromStringProto(inString, proto)
        decode = self.rows.decode
        return [decode(box, proto) for box in boxes]

    def toStringProto(self, inObject: Any, proto: Any) -> bytes:
        encode = self.rows.encode
        return b"".join([_serialize(encode(row.copy(), {}, proto)) for row in inObject])


class _FastListOf(amp.Argument):
    """An L{amp.ListOf} of plain strings or numbers, with the same wire form."""

    def __init__(self, original: amp.ListOf) -> None:
        super().__init__(original.optional)
        self.original = original
        self.element = original.elementType

    def fromString(self, inString: bytes) -> list[Any]:
        strings = _strings(inString)
        if strings is None:
            return self.original.fromString(inString)
        convert = self.element.fromString
        return [convert(text) for text in strings]

    def toString(self, inObject: Any) -> bytes:
        convert = self.element.toString
        parts: list[bytes] = []
        for item in inObject:
            text = convert(item)
            parts += (_PACK16(len(text)), text)
        return b"".join(parts)


def _fast(arg: amp.Argument) -> amp.Argument:
    """C{arg}, or an argument of the same wire form that costs less to convert."""
    if type(arg) is amp.AmpList and all(_plain(sub) for _, sub in arg.subargs):
        return _FastList(arg)
    if type(arg) is amp.ListOf and type(arg.elementType) in (amp.Integer, amp.Unicode,
                                                              amp.String, amp.Float):
        return _FastListOf(arg)
    return arg


_SCHEMAS: dict[tuple[type[amp.Command], str], _Schema | None] = {}


def _plain(arg: amp.Argument) -> bool:
    kind = type(arg)
    return (
        kind.toBox is amp.Argument.toBox
        and kind.fromBox is amp.Argument.fromBox
        and kind.retrieve is amp.Argument.retrieve
    )


def _schema(command: type[amp.Command], which: str) -> _Schema | None:
    """The prepared C{arguments} or C{response} of C{command}; None to leave it to AMP."""
    key = (command, which)
    try:
        return _SCHEMAS[key]
    except KeyError:
        arglist = getattr(command, which)
        schema = _Schema(arglist) if all(_plain(arg) for _, arg in arglist) else None
        _SCHEMAS[key] = schema
        return schema


class _RawRun:
    """Bytes still to come in a raw run, where they go, and who waits for the end."""

    def __init__(self, size: int, sink: Callable[[bytes], object]) -> None:
        self.left = size
        self.sink = sink
        self.done: Deferred[None] = Deferred()


def _massage_error(failure: Failure, command: Any) -> Failure:
    """An error answer as the exception class the command declared for its code."""
    failure.trap(amp.RemoteAmpError)
    error: Any = failure.value
    kind = command.reverseErrors.get(error.errorCode, amp.UnknownRemoteError)
    return Failure(kind(error.description))


_batch = threading.local()


def _descriptor(transport: Any) -> Any:
    """The file descriptor object that buffers what C{transport} writes, if any: a TCP
    connection (under TLS too), a pipe of L{StandardIO} or of a child process."""
    for _ in range(4):
        if transport is None or isinstance(transport, FileDescriptor):
            return transport
        writer = getattr(transport, "write_descriptor", None)
        if writer is not None:
            return writer()
        inner = stdio_writer(transport)
        transport = inner if inner is not None else getattr(transport, "transport", None)
    return None


class writes_batched:
    """Within this block (and within every L{CompassPeer.dataReceived}), what peers
    write goes out when the outermost block ends, in one system call per connection,
    instead of on the reactor's next turn: an answer and the byte run after it leave
    together, and no poll of the reactor stands between a request and its answer."""

    def __enter__(self) -> None:
        depth = getattr(_batch, "depth", 0)
        if not depth:
            _batch.pending = []
        _batch.depth = depth + 1

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        _batch.depth -= 1
        if not _batch.depth:
            pending, _batch.pending = _batch.pending, []
            for peer in pending:
                peer.send_now()


_BATCHED = writes_batched()


class CompassPeer(ResponderSerialization):
    """An AMP connection with compassd's hello gate and error discipline."""

    _peer = "a peer"
    greeted = False
    """Whether the hello exchange has completed on this connection."""

    alive = False
    """Whether the connection is up (AMP does not keep Protocol.connected)."""

    box_limits: BoxLimits = BOX_LIMITS
    """The limits on a box once the peer has said hello (an attribute so that a daemon,
    or a test, can set its own)."""

    hello_limits: BoxLimits = HELLO_LIMITS
    """The limits on a box before the hello exchange completes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dispatching = 0
        self._after: list[Callable[[], object]] = []
        self._answer_first = False
        self._held_answers: list[Deferred[Any]] = []
        self._box_keys = 0
        self._box_bytes = 0
        self._over_limit = False

    # --- box limits -------------------------------------------------------------------

    def _limits(self) -> BoxLimits:
        return self.box_limits if self.greeted else self.hello_limits

    def proto_init(self, string: bytes) -> str:
        self._box_keys = 0
        self._box_bytes = 0
        return super().proto_init(string)

    def proto_key(self, string: bytes) -> str:
        state: str = super().proto_key(string)
        if state == "value":
            # The key is in; cap the value to come at what the box has left, so that the
            # parser refuses an over-long value from its length prefix, unread.
            self._box_keys += 1
            self._box_bytes += 2 + len(string)
            limits = self._limits()
            if self._box_keys > limits.max_keys:
                self._box_too_big(f"more than {limits.max_keys} keys")
                return state
            self.MAX_LENGTH = max(0, min(self.MAX_LENGTH, limits.max_bytes - self._box_bytes - 2))
        return state

    def proto_value(self, string: bytes) -> str:
        self._box_bytes += 2 + len(string)
        return super().proto_value(string)

    def lengthLimitExceeded(self, length: int) -> None:
        limits = self._limits()
        self._box_too_big(
            f"a value of {length} bytes, past the {limits.max_bytes}-byte limit on a box")

    def stop_reading(self, why: str) -> None:
        """Read nothing more from this peer, and close the connection once the answer to
        the box being handled is written: for a command whose raw bytes will not be read
        (C{why} says why, in the log)."""
        if self._over_limit:
            return
        self._over_limit = True
        self.paused = True
        log.warn("{peer}: closing the connection after this answer: {why}",
                 peer=self.describe(), why=why)
        self.after_dispatch(self.drop)

    def _box_too_big(self, what: str) -> None:
        """Hang up on a peer whose box broke its limit; nothing more of it is read."""
        if self._over_limit:
            return
        self._over_limit = True
        self.paused = True  # the parser reads no further string of this connection
        log.warn("{peer} sent a box with {what}{before}; closing the connection",
                 peer=self.describe(), what=what,
                 before="" if self.greeted else " before hello")
        self.drop(abort=True)

    # --- raw byte runs ----------------------------------------------------------------

    _raw: _RawRun | None = None

    def expect_raw(self, size: int, sink: Callable[[bytes], object]) -> Deferred[None]:
        """Take the next C{size} bytes after the box being handled as raw data.

        Call it from a responder (or an answer's callback): the box parser stops after the
        current box, C{size} bytes go to C{sink} in pieces as they arrive, then boxes are
        parsed again. The result fires when all C{size} bytes have arrived, or fails with
        the reason the connection was lost first.
        """
        if self._raw is not None:
            raise RuntimeError("A raw byte run is already being received.")
        run = _RawRun(size, sink)
        if size == 0:
            run.done.callback(None)
            return run.done
        self._raw = run
        self.paused = True  # the box parser stops after the current box
        if self._read_size is not None and size > self._read_size:
            self._read_in_bulk(True)
        return run.done

    def _read_in_bulk(self, bulk: bool) -> None:
        """Read C{bulk_buffer} bytes per system call, or Twisted's own size again."""
        transport: Any = self.transport
        if transport is not None and self._read_size is not None:
            transport.bufferSize = self.bulk_buffer if bulk else self._read_size

    def dataReceived(self, data: bytes) -> None:
        if self._over_limit:
            return
        with _BATCHED:
            if self._raw is not None:
                data = self._feed_raw(data)
                if not data:
                    return
            self._parse(data)
            # A box just parsed may have started a raw run; the bytes after it are parked
            # in the parser's buffer until we hand them over.
            while self._raw is not None:
                pending = take_unparsed(self)
                if not pending:
                    break
                rest = self._feed_raw(pending)
                if rest:
                    self._parse(rest)

    def _parse(self, data: bytes) -> None:
        """Give C{data} to AMP's box parser; at a box boundary, the whole boxes it starts
        with are parsed here in one pass first (L{_whole_boxes})."""
        if box_parser_idle(self):
            data = self._whole_boxes(data)
            if not data:
                return
        super().dataReceived(data)

    def _whole_boxes(self, data: bytes) -> bytes:
        """Deliver the whole boxes at the start of C{data} that keep within this
        connection's limits, up to one that pauses the parser (a raw run, a refusal);
        return the rest, from the first box not delivered.

        AMP's own parser calls a method per key and per value; this does what it does
        for a box in one loop. A box cut short, one past a limit, a key longer than AMP
        allows or an empty box is left to AMP's parser, which handles it as it always
        has (waits for more, or refuses it)."""
        at, end = 0, len(data)
        while at < end and not self.paused:
            limits = self._limits()
            box = amp.AmpBox()
            keys = size = 0
            pos = at
            while True:
                if pos + 2 > end:
                    return data[at:]
                length = (data[pos] << 8) | data[pos + 1]
                pos += 2
                if not length:
                    break
                if length > _MAX_KEY or pos + length + 2 > end:
                    return data[at:]
                key = data[pos:pos + length]
                pos += length
                keys += 1
                size += 2 + length
                value = (data[pos] << 8) | data[pos + 1]
                pos += 2
                if keys > limits.max_keys or pos + value > end \
                        or value > min(_MAX_VALUE, limits.max_bytes - size - 2):
                    return data[at:]
                box[key] = data[pos:pos + value]
                pos += value
                size += 2 + value
            if not keys:
                return data[at:]
            at = pos
            self.boxReceiver.ampBoxReceived(box)
        return data[at:]

    # --- writing --------------------------------------------------------------------

    def sendBox(self, box: amp.AmpBox) -> None:
        super().sendBox(box)
        self.wrote()

    def wrote(self) -> None:
        """Note that this connection's transport was written to: inside
        L{writes_batched}, the data then leaves when the batch ends."""
        if getattr(_batch, "depth", 0) and self not in _batch.pending:
            _batch.pending.append(self)

    def send_now(self) -> None:
        """Write what the transport holds now rather than on the reactor's next turn.
        Nothing is done while a producer feeds the transport or it is closing; an error
        is left for the reactor's own write attempt, which closes the connection."""
        d = _descriptor(self.transport)
        if d is None or not d.connected or d.disconnecting or d.producer is not None \
                or not has_unwritten(d):
            return
        try:
            d.doWrite()
        except Exception:  # the reactor meets it again on its turn and reports it
            pass

    def _feed_raw(self, data: bytes) -> bytes:
        run = self._raw
        assert run is not None
        take = min(run.left, len(data))
        if take:
            run.sink(data if take == len(data) else data[:take])
            run.left -= take
        if run.left:
            return b""
        self._raw = None
        self.paused = False
        self._read_in_bulk(False)
        run.done.callback(None)
        return data[take:]

    bulk_buffer: int | None = None
    """On connections that carry models and tensors: bytes to buffer before pausing a
    producer, and to read per system call while a raw byte run longer than one ordinary
    read arrives (Twisted's default is 64 KiB, which costs a pass through Python per
    64 KiB of a multi-gigabyte transfer). Boxes are read at Twisted's size: a read
    allocates its whole size first, and 1 MiB per read (an C{mmap}, C{mremap} and
    C{munmap} each time) cost every small run on both ends."""

    _read_size: int | None = None
    """Twisted's read size of this connection, while C{bulk_buffer} may replace it."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.alive = True
        if self.bulk_buffer is not None and self.transport is not None:
            transport: Any = self.transport
            if hasattr(transport, "bufferSize") and hasattr(transport, "SEND_LIMIT"):
                self._read_size = transport.bufferSize
                transport.SEND_LIMIT = self.bulk_buffer
        get_peer = getattr(self.transport, "getPeer", None)
        if get_peer is not None:
            from ..listening import describe_address

            self._peer = describe_address(get_peer())
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(self.transport, option, None)
            if setter is not None:
                try:
                    setter(True)
                except OSError:  # a UNIX socket or a pipe
                    pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.alive = False
        run, self._raw = self._raw, None
        if run is not None:
            run.done.errback(reason)
        super().connectionLost(reason)

    def drop(self, *, abort: bool = False) -> None:
        """Close the connection: cleanly, or at once (C{abort}) for a peer gone silent."""
        transport: Any = self.transport
        if transport is None:
            return
        if abort and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            transport.loseConnection()

    def describe(self) -> str:
        """Who is on the other end, for log lines."""
        return self._peer

    # --- encoding (the same boxes as AMP's, for less work) ----------------------------

    def callRemote(self, commandType: type[amp.Command], *a: Any, **kw: Any) -> Any:
        arguments = _schema(commandType, "arguments")
        response = _schema(commandType, "response")
        if a or arguments is None or response is None:
            return super().callRemote(commandType, *a, **kw)
        unknown = kw.keys() - arguments.names
        if unknown:
            raise amp.InvalidSignature(f"{min(unknown)} is not a valid argument")
        forgotten = arguments.required - kw.keys()
        if forgotten:
            raise amp.InvalidSignature(
                f"forgot {', '.join(sorted(forgotten))} for {commandType.commandName!r}"
            )
        box = arguments.encode(kw, commandType.commandType(), self)
        if not commandType.requiresAnswer:
            send_box(self, commandType.commandName, box, False)
            return None
        d = send_box(self, commandType.commandName, box, True)
        assert d is not None
        d.addCallback(response.decode, self)
        d.addErrback(_massage_error, commandType)
        return d

    def serialize_responder(
        self, aCallable: Callable[..., Any], command: type[amp.Command]
    ) -> Callable[[amp.AmpBox], Deferred[Any]] | None:
        arguments = _schema(command, "arguments")
        response = _schema(command, "response")
        if arguments is None or response is None:
            return None

        spec: Any = command

        def doit(box: amp.AmpBox) -> Deferred[Any]:
            try:
                kw = arguments.decode(box, self)
            except Exception:
                if getattr(spec, "announces_run", False):
                    self.stop_reading("its arguments could not be read, so the raw bytes"
                                      " after it cannot be told from boxes")
                raise

            def known_errors(error: Failure) -> Failure:
                key = error.trap(*spec.allErrors)
                return Failure(amp.RemoteAmpError(
                    spec.allErrors[key], str(error.value), key in spec.fatalErrors,
                    local=error,
                ))

            def respond(objects: dict[str, Any]) -> amp.Box:
                try:
                    return response.encode(objects, command.responseType(), self)
                except BaseException:
                    original = Failure()
                    raise amp.BadLocalReturn(
                        f"{aCallable!r} returned {objects!r} and {command!r} could not"
                        " serialize it", original,
                    ) from None

            return maybeDeferred(aCallable, **kw).addCallback(respond).addErrback(known_errors)

        return doit

    # --- dispatch discipline --------------------------------------------------------

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if amp.COMMAND in box and amp.ASK not in box:
            if self.locator.locateResponder(box[amp.COMMAND]) is None:
                # An unknown one-way notice from a newer peer: AMP would drop the
                # connection over it; ignoring it keeps old and new peers compatible.
                log.debug("ignoring unknown notice {name!r}", name=box[amp.COMMAND])
                return
        self._dispatching += 1
        try:
            super().ampBoxReceived(box)
        except (amp.NoEmptyBoxes, KeyError) as e:
            # A box that is no command, or answers no question asked: the peer is out of
            # step (or hostile); AMP would let the exception end the connection with a
            # traceback in the log.
            log.warn("{peer} sent a box that breaks the protocol ({error}); closing the"
                     " connection", peer=self.describe(), error=type(e).__name__)
            self.drop(abort=True)
        finally:
            self._dispatching -= 1
            self._hold_for_answers()
        if not self._dispatching:
            self.run_after()

    def answer_first(self) -> None:
        """Called by a responder that returns a Deferred: until its answer is written,
        the notices this connection is sent (L{after_dispatch}) wait, so none overtakes
        it (a grant of the request it answers, say)."""
        self._answer_first = True

    def _hold_for_answers(self) -> None:
        held, self._held_answers = self._held_answers, []
        for answer in held:
            if answer.called:
                continue
            self._dispatching += 1
            answer.addBoth(self._answer_written)

    def _answer_written(self, result: object) -> object:
        """After AMP's own callbacks: the held answer is written (or its connection is
        gone); the notices held for it go out now."""
        self._dispatching -= 1
        if not self._dispatching:
            self.run_after()
        return result

    def after_dispatch(self, work: Callable[[], object]) -> None:
        """Run C{work} once the box being handled has been answered (or now, if none is)."""
        self._after.append(work)
        if not self._dispatching:
            self.run_after()

    def run_after(self) -> None:
        while self._after:
            work, self._after = self._after, []
            for item in work:
                item()

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Deferred[Any]] | None:
        try:
            inner = super().locateResponder(name)
        except UnicodeDecodeError:  # a command name that is not ASCII names no command
            return None
        if inner is None:
            return None
        text = name.decode("ascii", "replace")

        def responder(box: amp.AmpBox) -> Deferred[Any]:
            self._answer_first = False
            if name != Hello.commandName and not self.greeted:
                raise amp.RemoteAmpError(
                    HelloRequired.code,
                    f"Send hello before {text}: it names the protocol version and who you are.",
                )
            try:
                result = inner(box)
            except amp.RemoteAmpError:
                raise
            except Exception as e:
                raise amp.RemoteAmpError(
                    BadRequest.code,
                    f"The {text} command had missing or malformed arguments ({e!r}).",
                ) from e
            result = result.addErrback(self._unexpected, text)
            if self._answer_first:
                self._answer_first = False
                self._held_answers.append(result)
            return result

        return responder

    def _unexpected(self, failure: Failure, command: str) -> Failure:
        if failure.check(amp.RemoteAmpError):
            return failure
        log.failure(
            "Unexpected error while handling {command} from {peer}",
            failure,
            command=command,
            peer=self.describe(),
        )
        return Failure(
            amp.RemoteAmpError(
                InternalError.code,
                f"The {command} command failed unexpectedly ({public_reason(failure)});"
                " the daemon's log has the details.",
            )
        )


_ABSOLUTE = re.compile(r"(?<![\w.~-])/[^\s'\"]*")


def public_reason(failure: Failure) -> str:
    """What an unexpected error may tell the peer: its kind and message, with every
    absolute path (a board's work directory, a home directory) left out; the daemon's
    log keeps the whole of it."""
    error = failure.value
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    message = _ABSOLUTE.sub("<path>", failure.getErrorMessage())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
