"""Hostile bytes at compass-server: malformed, truncated, oversized and mutated boxes on a
client connection (L{SessionConnection}), before a session is open (the hello gate,
open-session with bad tickets, byte runs announced with bogus sizes) and after (uploads,
paths, runs with bogus tensors, benchmarks), while a legitimate client keeps being served.

The board is a real L{BoardService} on a Clock that is never started: its tracker link
redeems the tickets this test issues, and each session's executor is the real executor
protocol class (L{ExecutorServer}) with an in-memory backend, joined to a real
L{ExecutorHandle} by an iosim pump. The arena and the session directories are real files.
Run with ``pytest -s`` to see how many inputs were tried.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error as ierror
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd.executor.__main__ import ExecutorServer
from compassd.executor.handle import ExecutorHandle
from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import session as ps
from compassd.protocol.errors import TicketRejected
from compassd.protocol.peer import CompassPeer
from compassd.server.board import BoardService
from compassd.server.session import SessionConnection
from tests.fuzz._inprocess import IdentityBackend, box, mutate

X = np.array([7, -1, 0, 100], dtype=np.int8)
MODEL = b"model bytes"
MAX_UPLOAD = 1 << 20


class InProcessExecutor(ExecutorHandle):
    """An executor handle whose 'process' is an L{ExecutorServer} in this process."""

    def __init__(self, clock: Clock, pumps: list[iosim.IOPump]) -> None:
        super().__init__(clock, "identity")
        self.server = ExecutorServer(IdentityBackend(), lambda code: None)
        pumps.append(iosim.connect(self.server, iosim.makeFakeServer(self.server),
                                   self._channel, iosim.makeFakeClient(self._channel)))

    def kill(self) -> None:
        if self.alive:
            self.server.connectionLost(Failure(ierror.ConnectionDone("killed")))
            self._process_ended(Failure(ierror.ProcessTerminated(signal=9)))


class Board:
    """A BoardService with a fake tracker link and in-process executors."""

    def __init__(self, workdir: Path) -> None:
        self.clock = Clock()
        self.pumps: list[iosim.IOPump] = []
        self.tickets: set[str] = set()
        self.ended: list[str] = []
        workdir.mkdir()
        self.workdir = workdir
        self.board = BoardService(self.clock, key="npu", device="fuzz-1", backend="identity",
                                  tracker="tcp:127.0.0.1:9", workdir=workdir,
                                  max_upload=MAX_UPLOAD, arena_size=1 << 20)
        self.board.link.redeem = self._redeem  # type: ignore[method-assign]
        self.board.link.session_ended = (  # type: ignore[method-assign]
            lambda lease, detail="": self.ended.append(lease))
        self.board._take_executor = (  # type: ignore[method-assign]
            lambda: succeed(InProcessExecutor(self.clock, self.pumps)))
        # hashing runs in a thread on a real reactor; here, in step with the Clock
        self.board.in_thread = maybeDeferred
        self.issued = 0

    def _redeem(self, ticket: str) -> Deferred[dict[str, Any]]:
        if ticket not in self.tickets:
            return fail(TicketRejected(f"The ticket {ticket[:8]!r}... is not known."))
        self.tickets.discard(ticket)
        return succeed({"lease": f"lease-{ticket}", "user": "ann", "expires_in": 3600.0})

    def issue(self) -> str:
        self.issued += 1
        ticket = f"ticket-{self.issued:06d}"
        self.tickets.add(ticket)
        return ticket

    def flush(self) -> None:
        """Move bytes on every pump (new ones appear as sessions open) until none move."""
        for _ in range(1000):
            self.clock.advance(0)
            moved = [pump.pump() for pump in list(self.pumps)]
            if not any(moved):
                return
        raise AssertionError("the pumps never went quiet")


class LegitClient(CompassPeer):
    greeted = True


class Legit:
    """A well-behaved client on an iosim pump: hello, open, upload, load, run, close."""

    def __init__(self, board: Board) -> None:
        self.b = board
        self.client = LegitClient()
        self.connection = SessionConnection(board.board)
        board.pumps.append(iosim.connect(self.connection, iosim.makeFakeServer(self.connection),
                                         self.client, iosim.makeFakeClient(self.client)))

    def ok(self, d: Deferred[Any]) -> Any:
        self.b.flush()
        got: list[Any] = []
        d.addBoth(got.append)
        assert got, "no answer"
        if isinstance(got[0], Failure):
            got[0].raiseException()
        return got[0]

    def open(self) -> None:
        self.ok(self.client.callRemote(Hello, versions=[PROTOCOL_VERSION], role="client"))
        self.ok(self.client.callRemote(ps.OpenSession, ticket=self.b.issue()))
        d = self.client.callRemote(ps.Upload, path="m", size=len(MODEL),
                                   sha256=hashlib.sha256(MODEL).hexdigest())
        self.client.transport.write(MODEL)
        self.ok(d)
        assert self.ok(self.client.callRemote(ps.LoadModel, path="m"))["model"] == "m"

    def run(self) -> None:
        got: list[bytes] = []
        d = self.client.callRemote(ps.Run, model="m", inputs=[
            {"name": "x", "dtype": "int8", "shape": [4], "nbytes": 4}])
        self.client.transport.write(X.tobytes())

        def outputs(answer: dict[str, Any]) -> Deferred[Any]:
            (row,) = answer["outputs"]
            return self.client.expect_raw(row["nbytes"], got.append).addCallback(
                lambda _: answer)

        self.ok(d.addCallback(outputs))
        assert b"".join(got) == X.tobytes()

    def close(self) -> None:
        self.ok(self.client.callRemote(ps.CloseSession))
        self.client.transport.loseConnection()
        self.b.flush()


def feed(board: Board, data: bytes, chunk: int, connection: SessionConnection | None = None,
         transport: StringTransport | None = None) -> tuple[SessionConnection, StringTransport]:
    """Feed C{data} in chunks to a session connection on a StringTransport; nothing may
    escape C{dataReceived}, and no command may fail with an undeclared error."""
    if connection is None or transport is None:
        connection = SessionConnection(board.board)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.6.6.6", 6666))
        connection.makeConnection(transport)
    for i in range(0, max(len(data), 1), chunk):
        connection.dataReceived(data[i:i + chunk])
        board.flush()
        if transport.disconnecting:
            break
    assert b"INTERNAL_ERROR" not in transport.value()
    return connection, transport


def hang_up(board: Board, connection: SessionConnection) -> None:
    connection.connectionLost(Failure(ierror.ConnectionLost("the fuzz test hung up")))
    board.flush()


def hello(ask: int = 1) -> bytes:
    return box(Hello, ask, versions=[PROTOCOL_VERSION], role="client")


BIG = st.integers(-(2**70), 2**70)
SIZES = st.sampled_from([0, 1, 4, -1, -4, MAX_UPLOAD, MAX_UPLOAD + 1, 1 << 40]) | BIG
PATHS = (st.sampled_from(["m", "../x", "/etc/passwd", "a/../../x", "", ".", "..", "\x00",
                          "m\x00", "d/", "a" * 5000]) | st.text(max_size=20))
TENSOR = st.fixed_dictionaries({
    "name": st.sampled_from(["x", ""]) | st.text(max_size=8),
    "dtype": st.sampled_from(["int8", "float32", "object", "U4", "i4,i4", "nonsense", ""])
    | st.text(max_size=8),
    "shape": st.lists(st.integers(-2, 8) | BIG, max_size=3),
    "nbytes": SIZES,
})


@st.composite
def command(draw: Any) -> bytes:
    """One session command, well formed for AMP, with hostile values."""
    ask = draw(st.integers(2, 9999))
    which = draw(st.sampled_from(["upload", "download", "list", "remove", "load", "run",
                                  "bench", "close", "open", "hello"]))
    if which == "upload":
        return box(ps.Upload, ask, path=draw(PATHS), size=draw(SIZES),
                   sha256=draw(st.sampled_from(["", "zz", "0" * 64]) | st.text(max_size=70)))
    if which == "download":
        return box(ps.Download, ask, path=draw(PATHS))
    if which == "list":
        return box(ps.ListFiles, ask, path=draw(PATHS))
    if which == "remove":
        return box(ps.RemoveFile, ask, path=draw(PATHS))
    if which == "load":
        manifest = draw(st.none() | st.sampled_from(["{", "{}", "m", "../x"]))
        return box(ps.LoadModel, ask, path=draw(PATHS),
                   **({} if manifest is None else {"manifest": manifest}))
    if which == "run":
        timeout = draw(st.none() | st.sampled_from([0.0, -1.0, float("nan"), float("inf"),
                                                    1e300, 5.0]))
        return box(ps.Run, ask, model=draw(st.sampled_from(["m", "nope"])),
                   inputs=draw(st.lists(TENSOR, max_size=3)),
                   **({} if timeout is None else {"timeout": timeout}))
    if which == "bench":
        return box(ps.Benchmark, ask, model=draw(st.sampled_from(["m", "nope"])),
                   inputs=draw(st.lists(TENSOR, max_size=2)),
                   number=draw(st.sampled_from([-1, 0, 1, 2, 10**7]) | BIG),
                   repeat=draw(st.sampled_from([-1, 0, 1, 2, 1001])),
                   warmup=draw(st.sampled_from([-1, 0, 1, 10**7])))
    if which == "close":
        return box(ps.CloseSession, ask)
    if which == "open":
        return box(ps.OpenSession, ask, ticket=draw(st.sampled_from(
            ["", "ticket-000001", "x" * 300]) | st.text(max_size=20)))
    return box(Hello, ask, versions=draw(st.lists(st.integers(-2, 3) | BIG, max_size=3)),
               role=draw(st.sampled_from(["client", "board", "admin", ""])))


@st.composite
def stream(draw: Any, prefix: bytes = b"") -> bytes:
    """Commands (possibly after C{prefix}), their raw bytes, then a mutation."""
    parts = [prefix]
    for data in draw(st.lists(command(), min_size=1, max_size=4)):
        parts.append(data)
        parts.append(draw(st.sampled_from([b"", MODEL, X.tobytes()])))
    return mutate(draw, st, b"".join(parts))


SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Board:
    # The executor runs in this process here: its attach must not move pytest into a
    # session directory that is deleted later (a deleted working directory breaks
    # everything that resolves a relative path afterwards, Twisted's plugin search too).
    monkeypatch.setattr(os, "chdir", lambda path: None)
    return Board(tmp_path / "work")


def test_hostile_connections_before_a_session_never_disturb_the_session_being_served(
    board: Board
) -> None:
    legit = Legit(board)
    legit.open()
    session = board.board.session
    tried = [0]

    @SETTINGS
    @given(data=st.one_of(stream(), stream(prefix=hello())), chunk=st.integers(1, 4096))
    def one(data: bytes, chunk: int) -> None:
        tried[0] += 1
        connection, _ = feed(board, data, chunk)
        assert connection.session is None  # the board was busy: no ticket opened one
        hang_up(board, connection)
        assert board.board.session is session
        legit.run()

    one()
    legit.close()
    assert board.board.session is None and not list(board.workdir.glob("session-*"))
    print(f"\nfuzzed compass-server before open-session with {tried[0]} inputs")
    assert tried[0] >= 50


def test_hostile_commands_in_an_open_session_end_with_it_and_the_next_client_is_served(
    board: Board
) -> None:
    tried = [0]

    @SETTINGS
    @given(data=stream(), chunk=st.integers(1, 4096))
    def one(data: bytes, chunk: int) -> None:
        tried[0] += 1
        opening = hello() + box(ps.OpenSession, 1_000_000, ticket=board.issue())
        connection, transport = feed(board, opening, len(opening))
        assert connection.session is not None and board.board.session is connection.session
        feed(board, data, chunk, connection, transport)
        hang_up(board, connection)
        assert board.board.session is None
        assert not list(board.workdir.glob("session-*")), "a session directory was left"
        legit = Legit(board)
        legit.open()
        legit.run()
        legit.close()

    one()
    print(f"\nfuzzed compass-server's open sessions with {tried[0]} inputs")
    assert tried[0] >= 50
    if os.path.isdir("/dev/shm"):
        left = [name for name in os.listdir("/dev/shm")
                if name.startswith(f"compass-arena-fuzz-1-{os.getpid()}-")]
        assert not left, f"arenas were left behind: {left}"


def test_a_byte_run_announced_without_a_session_closes_the_connection_unread(
    board: Board
) -> None:
    """Upload, Run and Benchmark from a peer that said hello but opened no session: the
    board does no work for it, reads none of the announced bytes and hangs up at once,
    while the session it serves goes on."""
    legit = Legit(board)
    legit.open()
    tried = [0]

    @SETTINGS
    @given(which=st.sampled_from(["upload", "run", "bench"]),
           size=st.integers(1, 1 << 40), chunk=st.integers(1, 4096))
    def one(which: str, size: int, chunk: int) -> None:
        tried[0] += 1
        rows = [{"name": "x", "dtype": "int8", "shape": [4], "nbytes": size}]
        announce = {
            "upload": box(ps.Upload, 2, path="m", size=size, sha256="0" * 64),
            "run": box(ps.Run, 2, model="m", inputs=rows),
            "bench": box(ps.Benchmark, 2, model="m", inputs=rows, number=1, repeat=1,
                         warmup=0),
        }[which]
        connection, transport = feed(board, hello() + announce + b"\0" * 64, chunk)
        assert transport.disconnecting, "the connection was left open"
        assert connection._raw is None, "the board set out to read the announced bytes"
        assert connection.session is None
        hang_up(board, connection)
        legit.run()

    one()
    legit.close()
    assert tried[0] >= 50
