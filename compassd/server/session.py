"""One client connection to compass-server: the session protocol's responders.

Nothing but hello and open-session is served until the tracker has confirmed the ticket.
Large values cross as raw byte runs (see L{compassd.protocol.session}): uploads go
straight into a partial file of the session directory, input tensors straight into the
session's shared arena, where the executor reads them; outputs go from the arena to the
socket right after the answer that announces them. A byte run announced by a refused
command is still read whole and thrown away, so the connection stays in step, when it is
within what the session may send (its upload quota, half its arena); past that, or with
no session open, it is not read: the refusal is answered and the connection closed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPullProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from ..executor.arena import Arena, Slot, align_up, parse_dtype
from ..executor.arena_space import OutOfSharedMemory
from ..protocol import session as ps
from ..protocol.errors import (
    BadRequest,
    LimitExceeded,
    RunFailed,
    SessionEnded,
    TensorMismatch,
)
from ..protocol.hello import Greeting, HelloResponder, software_name
from .board import ActiveSession, BoardService, session_gone
from .modelcache import store_cached_in_thread
from .upload import FileDownload, UploadSink, check_sha256, open_download

log = Logger(namespace="compass.server")


MAX_DOWNLOADS = 4
"""Downloads one connection may have under way at once (pipelined); each holds an open
file until its bytes are sent."""

MAX_HELD = 64
"""Boxes a connection may have waiting behind a byte run it does not read."""

HASH_BACKLOG = 32 << 20
"""Bytes of an upload that arrived and are not hashed yet, at most: past it the board
stops reading from the client until its hashing thread catches up."""

OUTPUT_CHUNK = 4 << 20
"""Bytes of an output tensor copied out of the arena per write: Twisted transports take
only bytes, and one copy of a whole large tensor costs a fresh allocation (page faults)
each run, while chunks of this size reuse memory and leave whole SEND_LIMIT pieces."""


@implementer(IPullProducer)
class _ChunkProducer:
    """Write an iterator's chunks to a transport as fast as it takes them, then call
    C{done}. A chunk that cannot be made (the arena closed under it) aborts the
    connection: the byte run cannot be finished, and the peer must not wait for it."""

    def __init__(self, transport: Any, chunks: Iterator[bytes],
                 done: Callable[[], object] = lambda: None) -> None:
        self._transport = transport
        self._chunks = chunks
        self._done = done
        transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._transport.unregisterProducer()
            self._done()
            return
        except Exception:
            log.failure("A byte run could not be finished; dropping the connection")
            self._transport.unregisterProducer()
            self._transport.abortConnection()
            return
        self._transport.write(chunk)

    def stopProducing(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _arena_chunks(arena: Arena, slots: list[Slot]) -> Iterator[bytes]:
    """The bytes of C{slots}, in order, in pieces of at most L{OUTPUT_CHUNK}."""
    for slot in slots:
        for at in range(slot.offset, slot.end, OUTPUT_CHUNK):
            yield arena.read_bytes(at, min(OUTPUT_CHUNK, slot.end - at))


class _SlotWriter:
    """A raw-run sink that fills byte ranges of the arena one after the other."""

    def __init__(self, arena: Arena, ranges: list[tuple[int, int]]) -> None:
        self._view = arena.view()
        self._ranges = [r for r in ranges if r[1]]
        self._index = 0
        self._done = 0

    def __call__(self, data: bytes) -> None:
        piece = memoryview(data)
        while piece:
            offset, nbytes = self._ranges[self._index]
            take = min(len(piece), nbytes - self._done)
            at = offset + self._done
            self._view[at:at + take] = piece[:take]
            self._done += take
            piece = piece[take:]
            if self._done == nbytes:
                self._index += 1
                self._done = 0

    def close(self, result: object) -> object:
        self._view.release()
        return result


def _discard(data: bytes) -> None:
    """Where the bytes of a refused byte run go."""


def _connection_gone(failure: Failure, doing: str) -> Failure:
    """A byte run cut by the client going away fails with a declared error: AMP logs an
    undeclared one as an unexpected error with its traceback."""
    if failure.check(ConnectionLost, ConnectionDone):
        return Failure(SessionEnded(f"The client went away while {doing}."))
    return failure


class SessionConnection(HelloResponder):
    """A client of this board: at most one session, opened with a ticket."""

    daemon = "board"
    software = software_name("server")
    roles = frozenset({"client"})
    bulk_buffer = 1 << 20

    @property
    def authenticated(self) -> bool:
        """Whether a ticket has opened a session here: a board's hello needs no token,
        so until then the connection counts against the caps on connections not yet
        past hello, and the hello timeout (from connecting) covers open-session too."""
        return self.session is not None

    def __init__(self, board: BoardService) -> None:
        super().__init__()
        self.board = board
        self.session: ActiveSession | None = None
        self.closing: tuple[str, str] | None = None
        self._held: list[Callable[[], object]] = []
        self._plans: dict[tuple[Any, ...], tuple[list[dict[str, Any]], int, int]] = {}
        """Input plans by the rows announced and the arena's size (L{_inputs_to_arena})."""

    # --- the board's side ----------------------------------------------------------

    def session_closing(self, reason: str, message: str) -> None:
        """The board ended our session: tell the client, and hang up a little later."""
        self.closing = (reason, message)
        if self.alive:
            self._between_runs(lambda: self.callRemote(ps.SessionClosing, reason=reason,
                                                       message=message))
            self._hang_up = self.board.reactor.callLater(30.0, self.drop)

    _streaming = False
    """Whether a byte run (outputs, a download) is being written by a producer."""

    _downloads = 0
    """Downloads asked for and not yet sent (being hashed, or waiting for the byte run
    before them): each holds an open file."""

    def sendBox(self, box: amp.AmpBox) -> None:
        """Write a box now, or once the byte run being written is done: the answer to a
        command pipelined behind a download must not land inside its bytes."""
        if not self._streaming:
            super().sendBox(box)
            return
        if len(self._held) >= MAX_HELD:
            log.warn("{peer} pipelined more than {count} commands behind a byte run it"
                     " does not read; closing the connection", peer=self.describe(),
                     count=MAX_HELD)
            self.drop(abort=True)
            return
        self._held.append(lambda: self.sendBox(box))

    def _between_runs(self, work: Callable[[], object]) -> None:
        """Do C{work} (write a box) now, or once the byte run being written is done: a
        box in the middle of it would put the connection out of step."""
        if self._streaming:
            self._held.append(work)
        else:
            work()

    def _stream(self, chunks: Iterator[bytes],
                then: Callable[[], object] = lambda: None) -> None:
        """Write C{chunks} as a byte run through a producer (boxes wait for its end),
        then call C{then}; a run asked for while another is written (pipelined
        downloads) follows it."""
        if self.transport is None:
            then()
            return
        if self._streaming:
            self._held.append(lambda: self._stream(chunks, then))
            return
        self._streaming = True

        def done() -> None:
            self._streaming = False
            then()
            held, self._held = self._held, []
            for work in held:
                if self.alive:
                    work()

        _ChunkProducer(self.transport, chunks, done)

    _hang_up: IDelayedCall | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self._hang_up is not None and self._hang_up.active():
            self._hang_up.cancel()
        if self.session is not None:
            self.board.client_lost(self.session)

    def _active(self) -> ActiveSession:
        session = self.session
        if session is None or session.ended is not None:
            if self.closing is not None:
                raise SessionEnded(self.closing[1])
            raise session_gone(session)
        return session

    def _refuse_run(self, size: int, error: Exception, limit: int) -> Deferred[Any]:
        """Refuse a command that announced C{size} raw bytes.

        Within the session's own limit for such a run (C{limit}; none without an open
        session) the bytes are read and thrown away, so the session stays usable; past
        it they are not read at all: the refusal is answered and the connection closed."""
        if self.session is None or size > limit:
            self.stop_reading(f"it announced {size} raw bytes, more than the {max(limit, 0)}"
                              " it may send " + ("here" if self.session is not None
                                                 else "before a session is open"))
            return fail(error)
        d: Deferred[Any] = self.expect_raw(size, _discard)
        d.addErrback(_connection_gone, "sending the bytes of a refused command")
        return d.addCallback(lambda _: fail(error))

    # --- opening -----------------------------------------------------------------

    def welcome(self, greeting: Greeting) -> dict[str, Any]:
        """A board takes any client: the ticket in open-session is its credential."""
        return self.welcomed(greeting, greeting.user or "", ["client"])

    @ps.OpenSession.responder
    def open_session(self, ticket: str, device: str | None = None
                     ) -> Deferred[dict[str, Any]]:
        if self.session is not None:
            raise BadRequest("This connection already has a session; open another"
                             " connection for another lease.")

        def opened(session: ActiveSession) -> dict[str, Any]:
            if not self.alive:
                self.board.client_lost(session)
                raise SessionEnded("The client went away while the session opened.")
            self.session = session
            return {
                "session": session.ident,
                "lease": session.lease,
                "expires_in": max(0.0, session.deadline - self.board.reactor.seconds()),
                "backend": self.board.backend,
                "info": list(self.board.link.board.info),
                "max_upload": self.board.max_upload,
                "features": [ps.FEATURE_DIGEST_AFTER]
                + ([ps.FEATURE_CACHE] if self.board.cache is not None else []),
            }

        return self.board.open_session(self, ticket).addCallback(opened)

    @ps.CloseSession.responder
    def close_session(self) -> dict[str, Any]:
        session = self._active()
        self.closing = ("closed", "The session was closed by its client.")
        self.board.end_session(session, "closed", "The client closed the session.")
        return {}

    # --- files ---------------------------------------------------------------------

    @ps.Upload.responder
    def upload(self, path: str, size: int, sha256: str) -> Deferred[dict[str, Any]]:
        return self._upload(path, size, sha256)

    @ps.UploadDigestAfter.responder
    def upload_digest_after(self, path: str, size: int) -> Deferred[dict[str, Any]]:
        return self._upload(path, size, None)

    def _upload(self, path: str, size: int, sha256: str | None) -> Deferred[dict[str, Any]]:
        """Receive an upload: the bytes are written and hashed (in a thread) as they
        arrive; C{sha256} None: the digest follows them."""
        if size < 0:
            raise BadRequest(f"An upload of {size} bytes makes no sense.")
        announced = size + (ps.DIGEST_SIZE if sha256 is None else 0)
        try:
            session = self._active()
            sink = UploadSink.start(session.directory, path, size, sha256,
                                    self.board.in_thread)
        except Exception as e:
            # within the quota (and its digest), the bytes are read and thrown away
            return self._refuse_run(announced, e, self.board.max_upload + announced - size
                                    if self.board.max_upload > 0 else announced)
        arrived = self.expect_raw(sink.expected, self._hashed_as_it_arrives(sink))

        def verify(_: object) -> Any:
            return sink.finish_in_thread()  # waits for the hashing thread

        def stored(kept: Path) -> dict[str, Any]:
            assert sink.sha256 is not None
            if self.board.cache is not None:
                self.board.cache.add(kept, sink.sha256)
            if self.board.metrics is not None:
                self.board.metrics.uploaded.inc(size)
            log.info("{device}: session {session} stored {path} ({size} bytes{how})",
                     device=self.board.device, session=session.ident, path=path, size=size,
                     how=", its digest after them" if sha256 is None else "")
            return {}

        def lost(failure: Failure) -> Failure:
            sink.abort()
            return _connection_gone(failure, f"uploading {path!r}")

        def why(failure: Failure) -> Failure:
            # the session ended under the upload (its lease expired, it was revoked):
            # say why, in the words the board told the client
            if failure.check(SessionEnded) and self.closing is not None:
                said = self.closing[1]
                if said not in failure.getErrorMessage():
                    return Failure(SessionEnded(f"{failure.getErrorMessage()} {said}"))
            return failure

        return arrived.addCallbacks(verify, lost).addCallback(stored).addErrback(why)

    def _hashed_as_it_arrives(self, sink: UploadSink) -> Callable[[bytes], None]:
        """C{sink}, and while the hashing thread is more than L{HASH_BACKLOG} bytes
        behind, the connection reads nothing more (TCP then holds the client back)."""
        paused = [False]

        transport: Any = self.transport

        def resume(_: object) -> None:
            paused[0] = False
            if self.alive:
                transport.resumeProducing()

        def take(data: bytes) -> None:
            sink(data)
            if sink.backlog > HASH_BACKLOG and not paused[0] \
                    and hasattr(transport, "pauseProducing"):
                paused[0] = True
                transport.pauseProducing()
                sink.below(HASH_BACKLOG // 2).addCallback(resume)

        return take

    @ps.UseCached.responder
    def use_cached(self, path: str, size: int, sha256: str) -> Deferred[dict[str, Any]]:
        session = self._active()
        digest = check_sha256(session.directory.describe(path), sha256)
        if not isinstance(size, int) or size < 0:
            raise BadRequest(f"A file of {size} bytes makes no sense.")
        cache = self.board.cache
        if cache is None:
            return succeed({"stored": False})

        def answer(stored: bool) -> dict[str, Any]:
            if stored:
                log.info("{device}: session {session} stored {path} ({size} bytes) from"
                         " the model cache", device=self.board.device,
                         session=session.ident, path=path, size=size)
            return {"stored": stored}

        # the entry is checked (hashed again if need be) and linked in a thread
        d = store_cached_in_thread(cache, session.directory, path, size, digest,
                                   self.board.in_thread,
                                   ended=lambda: session.ended is not None)
        return d.addCallback(answer)

    @ps.Download.responder
    def download(self, path: str) -> Deferred[dict[str, Any]]:
        session = self._active()
        if self._downloads >= MAX_DOWNLOADS:
            raise LimitExceeded(
                f"{self._downloads} downloads are already under way on this connection,"
                f" the most it may have; read them before asking for {path!r}.")
        self._downloads += 1

        def sent() -> None:
            self._downloads -= 1

        opened: list[FileDownload] = []

        def answer(source: FileDownload) -> dict[str, Any]:
            if not self.alive:
                source.close()
                return {"size": 0, "sha256": ""}
            if self.board.metrics is not None:
                self.board.metrics.downloaded.inc(source.size)
            opened.append(source)
            return {"size": source.size, "sha256": source.sha256}

        def stream() -> None:
            if opened:
                self._stream(iter(opened.pop()), sent)
            else:
                sent()

        # opening and hashing (up to 4 GiB) happen in a thread; the bytes follow the
        # answer, which is written when it fires
        d = open_download(session.directory, path,
                          in_thread=self.board.in_thread).addCallback(answer)
        self._follow_answer(stream, d)

        def refused(failure: Failure) -> Failure:
            sent()
            return failure

        return d.addErrback(refused)

    @ps.ListFiles.responder
    def list_files(self, path: str | None = None) -> dict[str, Any]:
        session = self._active()
        return {"files": [entry.as_box() for entry in session.directory.listdir(path)]}

    @ps.RemoveFile.responder
    def remove_file(self, path: str) -> dict[str, Any]:
        self._active().directory.remove(path)
        return {}

    # --- models --------------------------------------------------------------------

    @ps.LoadModel.responder
    def load_model(self, path: str, manifest: str | None = None) -> Deferred[dict[str, Any]]:
        session = self._active()
        files = session.directory.files
        model_path = session.directory.resolve(path).relative_to(files)
        manifest_path = (str(session.directory.resolve(manifest).relative_to(files))
                         if manifest is not None and not manifest.lstrip().startswith("{")
                         else manifest)
        d = session.executor.load(str(model_path), manifest_path,
                                  timeout=self._time_left(session))

        def loaded(answer: tuple[str, list[Any], list[Any]]) -> dict[str, Any]:
            model, inputs, outputs = answer
            session.models[model] = path
            log.info("{device}: session {session} loaded {path} as {model}",
                     device=self.board.device, session=session.ident, path=path,
                     model=model)
            return {"model": model, "inputs": [spec.to_amp() for spec in inputs],
                    "outputs": [spec.to_amp() for spec in outputs]}

        return d.addCallback(loaded)

    def _arena_share(self) -> int:
        """The most input bytes a run may announce: half the session's arena."""
        session = self.session
        return session.arena.size // 2 if session is not None and session.ended is None else 0

    def _inputs_to_arena(self, session: ActiveSession, inputs: list[dict[str, Any]]
                         ) -> tuple[list[dict[str, Any]], int, int]:
        """Plan where each input goes in the arena: slots, total bytes, end offset; and
        reserve their pages. A run like the one before (the same names, dtypes and
        shapes: a loop over one model) reuses its plan, which callers must not change."""
        key: tuple[Any, ...] | None = None
        plan = None
        try:
            key = (session.arena.size, *((row["name"], row["dtype"], tuple(row["shape"]),
                                          row["nbytes"]) for row in inputs))
            plan = self._plans.get(key)
        except (TypeError, KeyError):  # malformed: planned (and refused) below
            key = None
        if plan is None:
            plan = self._plan_inputs(session, inputs)
            if key is not None:
                if len(self._plans) >= 16:
                    self._plans.clear()
                self._plans[key] = plan
        try:  # the pages the inputs go to, before a byte arrives: never a SIGBUS
            session.space.reserve(0, plan[2])
        except OutOfSharedMemory as e:
            raise LimitExceeded(f"The inputs were not taken: {e}") from None
        return plan

    def _plan_inputs(self, session: ActiveSession, inputs: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], int, int]:
        slots, offset, total = [], 0, 0
        for row in inputs:
            name = row["name"]
            try:
                dtype = parse_dtype(row["dtype"])
            except (TypeError, ValueError) as e:
                raise TensorMismatch(f"Input {name!r} has the unknown dtype"
                                     f" {row['dtype']!r}.") from e
            shape = [int(d) for d in row["shape"]]
            if any(d < 0 for d in shape):
                raise TensorMismatch(f"Input {name!r} has a negative dimension in {shape}.")
            expected = math.prod(shape) * dtype.itemsize
            if expected != row["nbytes"]:
                raise TensorMismatch(
                    f"Input {name!r} is {dtype.name} with shape {tuple(shape)}, which takes"
                    f" {expected} bytes, but {row['nbytes']} were announced.")
            offset = align_up(offset)
            slots.append({"name": name, "dtype": dtype.name, "shape": shape,
                          "offset": offset, "nbytes": expected})
            offset += expected
            total += expected
        if offset > session.arena.size // 2:
            raise LimitExceeded(
                f"The inputs take {total} bytes, more than half of the session's"
                f" {session.arena.size}-byte tensor arena; send smaller tensors.")
        return slots, total, offset

    def _receive_inputs(self, session: ActiveSession, slots: list[dict[str, Any]],
                        total: int) -> Deferred[None]:
        """Read the inputs' raw bytes straight into their arena slots."""
        writer = _SlotWriter(session.arena, [(s["offset"], s["nbytes"]) for s in slots])
        d: Deferred[Any] = self.expect_raw(total, writer).addBoth(writer.close)
        metrics = self.board.metrics
        if metrics is not None:
            def received(result: object) -> object:
                metrics.uploaded.inc(total)
                return result

            d.addCallback(received)
        return d.addErrback(_connection_gone, "sending the inputs")

    def _time_left(self, session: ActiveSession, timeout: float | None = None) -> float:
        """How long a backend call may take: the run timeout, the client's, and the lease."""
        limit = self.board.run_timeout if timeout is None else min(timeout,
                                                                   self.board.run_timeout)
        left = session.deadline - self.board.reactor.seconds()
        if left <= 0:
            raise SessionEnded("The lease has expired; the session is ending.")
        return min(limit, left)

    def _ended_meanwhile(self, failure: Failure, session: ActiveSession) -> Failure:
        """A call cut short because the session ended says why the session ended."""
        if session.ended is not None and session.ended != "executor-died" \
                and self.closing is not None and not failure.check(SessionEnded):
            return Failure(SessionEnded(self.closing[1]))
        return failure

    @ps.Run.responder
    def run(self, model: str, inputs: list[dict[str, Any]],
            timeout: float | None = None) -> Deferred[Any]:
        announced = sum(max(0, int(row["nbytes"])) for row in inputs)
        try:
            session = self._active()
            if timeout is not None and not timeout > 0:
                raise BadRequest(f"A run timeout must be positive, not {timeout}.")
            slots, total, end = self._inputs_to_arena(session, inputs)
        except Exception as e:
            return self._refuse_run(announced, e, self._arena_share())
        out_offset = align_up(end)
        arena = session.arena

        def execute(_: object) -> Deferred[tuple[list[Slot], float]]:
            if session.ended is not None:
                raise SessionEnded(self.closing[1] if self.closing else "The session ended.")
            return session.executor.execute(
                model, [Slot.from_amp(slot) for slot in slots], out_offset,
                arena.size - out_offset, timeout=self._time_left(session, timeout))

        answer: Deferred[Any] = self._receive_inputs(session, slots, total)
        answer.addCallback(execute)
        outputs: dict[str, Any] = {}

        def reply(result: tuple[list[Slot], float]) -> dict[str, Any]:
            if session.ended is not None or arena.closed:
                # The executor answered just as the session ended (its arena is gone):
                # an answer promising output bytes that cannot follow would leave the
                # client waiting for them.
                raise SessionEnded(self.closing[1] if self.closing else
                                   "The session ended while the model ran.")
            slots_out, seconds = result
            rows = []
            for slot in slots_out:
                if not 0 <= slot.offset <= slot.end <= arena.size:
                    raise RunFailed(f"The executor put output {slot.name!r} outside the"
                                    " arena.")
                rows.append({"name": slot.name, "dtype": slot.dtype,
                             "shape": list(slot.shape), "nbytes": slot.nbytes})
            outputs["slots"] = slots_out
            metrics = self.board.metrics
            if metrics is not None:
                metrics.ran(self.board.backend, seconds)
                metrics.downloaded.inc(sum(slot.nbytes for slot in slots_out))
            return {"outputs": rows, "seconds": seconds}

        def run_failed(failure: Failure) -> Failure:
            if self.board.metrics is not None and not failure.check(SessionEnded):
                self.board.metrics.run_failed(self.board.backend)
            return failure

        def send_outputs() -> None:
            slots = [slot for slot in outputs.get("slots", []) if slot.nbytes]
            if not slots or self.transport is None:
                return
            if sum(slot.nbytes for slot in slots) <= OUTPUT_CHUNK:
                self.transport.write(b"".join(_arena_chunks(arena, slots)))
            else:
                self._stream(_arena_chunks(arena, slots))

        answer.addErrback(self._ended_meanwhile, session)
        answer.addCallback(reply)
        answer.addErrback(run_failed)
        self._follow_answer(send_outputs, answer)
        return answer

    @ps.Benchmark.responder
    def benchmark(self, model: str, inputs: list[dict[str, Any]], number: int, repeat: int,
                  warmup: int | None = None) -> Deferred[dict[str, Any]]:
        announced = sum(max(0, int(row["nbytes"])) for row in inputs)
        try:
            session = self._active()
            if not (0 < number <= 1_000_000 and 0 < repeat <= 1000):
                raise BadRequest(f"number ({number}) and repeat ({repeat}) must be positive"
                                 " (at most 1,000,000 and 1,000).")
            if warmup is not None and not 0 <= warmup <= 1_000_000:
                raise BadRequest(f"warmup must be 0 to 1,000,000, not {warmup}.")
            slots, total, _ = self._inputs_to_arena(session, inputs)
        except Exception as e:
            return self._refuse_run(announced, e, self._arena_share())

        def measure(_: object) -> Deferred[list[float]]:
            return session.executor.measure(
                model, [Slot.from_amp(slot) for slot in slots], number, repeat,
                1 if warmup is None else warmup, timeout=self._time_left(session))

        d: Deferred[Any] = self._receive_inputs(session, slots, total)
        d.addCallback(measure)
        d.addErrback(self._ended_meanwhile, session)
        return d.addCallback(lambda times: {"times": list(times)})

    # --- plumbing ------------------------------------------------------------------

    def _follow_answer(self, work: Callable[[], object],
                       answer: Deferred[Any] | None = None) -> None:
        """Run C{work} right after the answer to the box being handled is written.

        AMP attaches its answer-writing callbacks to the responder's Deferred once the
        responder returns; L{CompassPeer.after_dispatch} runs after that, so a callback
        added then runs after the answer went out. Nothing follows a refusal.
        """
        if answer is None:
            self.after_dispatch(work)
            return
        succeeded: list[bool] = []

        def note(result: Any) -> Any:
            succeeded.append(True)
            return result

        def follow(result: Any) -> Any:
            if succeeded:
                work()
            return result

        answer.addCallback(note)

        def then() -> None:
            answer.addBoth(follow)

        self.after_dispatch(then)

