"""CompassPeer: the hello gate, the error discipline, raw byte runs and after-dispatch work.

Connections are in memory: L{twisted.test.iosim} pumps for two peers, and a
L{StringTransport} where a test must control exactly how bytes arrive.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd.protocol import (
    PROTOCOL_VERSION,
    BadRequest,
    CompassCommand,
    Hello,
    HelloRequired,
    InternalError,
    NoSuchKey,
    UnsupportedVersion,
    choose_version,
)
from compassd.protocol.peer import BoxLimits, CompassPeer
from compassd.tracker.service import TrackerConnection, TrackerService

# --- a small vocabulary for the tests -------------------------------------------------


class Echo(CompassCommand):
    commandName = b"test-echo"
    arguments = [(b"n", amp.Integer()), (b"text", amp.Unicode(optional=True))]
    response = [(b"n", amp.Integer())]


class Boom(CompassCommand):
    commandName = b"test-boom"
    arguments = [(b"later", amp.Boolean())]
    response: list[tuple[bytes, amp.Argument]] = []


class Refuse(CompassCommand):
    commandName = b"test-refuse"
    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []


class Put(CompassCommand):
    """C{size} raw bytes follow this box; the answer says what arrived."""

    commandName = b"test-put"
    arguments = [(b"size", amp.Integer())]
    response = [(b"size", amp.Integer()), (b"sha256", amp.Unicode()), (b"pieces", amp.Integer())]


class Poke(CompassCommand):
    """The answer is followed by C{count} L{Poked} notices queued with after_dispatch."""

    commandName = b"test-poke"
    arguments = [(b"count", amp.Integer())]
    response = [(b"done", amp.Boolean())]


class Later(CompassCommand):
    """Answered when the test fires the server's C{later} Deferred, the responder
    having asked that notices wait for the answer (L{CompassPeer.answer_first})."""

    commandName = b"test-later"
    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"done", amp.Boolean())]


class Poked(CompassCommand):
    commandName = b"test-poked"
    arguments = [(b"index", amp.Integer())]
    requiresAnswer = False


class Unknown(CompassCommand):
    commandName = b"test-nobody-answers-this"
    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []


class UnknownNotice(CompassCommand):
    commandName = b"test-nobody-hears-this"
    arguments: list[tuple[bytes, amp.Argument]] = []
    requiresAnswer = False


class Server(CompassPeer):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []

    @Hello.responder
    def hello(
        self,
        versions: list[int],
        role: str,
        token: str | None = None,
        user: str | None = None,
        software: str | None = None,
    ) -> dict[str, Any]:
        version = choose_version(versions)
        if version is None:
            raise UnsupportedVersion(f"No shared version in {versions}.")
        self.greeted = True
        return {"version": version, "user": user or "anonymous", "roles": [role],
                "software": "test"}

    @Echo.responder
    def echo(self, n: int, text: str | None = None) -> dict[str, Any]:
        return {"n": n}

    @Boom.responder
    def boom(self, later: bool) -> Any:
        if later:
            return fail(ZeroDivisionError("the disk ate it"))
        raise ZeroDivisionError("the disk ate it")

    @Refuse.responder
    def refuse(self) -> dict[str, Any]:
        raise NoSuchKey("No device key of that name is known.")

    @Put.responder
    def put(self, size: int) -> Deferred[dict[str, Any]]:
        pieces: list[bytes] = []
        done = self.expect_raw(size, pieces.append)

        def answer(_: None) -> dict[str, Any]:
            data = b"".join(pieces)
            self.received.append(data)
            return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "pieces": len(pieces)}

        return done.addCallback(answer)

    @Later.responder
    def later(self) -> Deferred[dict[str, Any]]:
        self.answer_first()
        self.later_answer: Deferred[None] = Deferred()
        return self.later_answer.addCallback(lambda _: {"done": True})

    @Poke.responder
    def poke(self, count: int) -> dict[str, Any]:
        for index in range(count):
            self.after_dispatch(lambda i=index: self.callRemote(Poked, index=i))
        return {"done": True}


class Client(CompassPeer):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, Any]] = []

    @Poked.responder
    def poked(self, index: int) -> dict[str, Any]:
        self.events.append(("poked", index))
        return {}


class ReactorTransport(iosim.FakeTransport):
    """A FakeTransport that, like a reactor's TCP transport, closes the connection when
    the protocol's dataReceived raises instead of letting the exception escape."""

    def bufferReceived(self, buf: Any) -> None:
        try:
            super().bufferReceived(buf)
        except Exception as e:
            self.disconnectReason = e
            self.loseConnection()


def connect(server: CompassPeer | None = None) -> tuple[Client, Any, iosim.IOPump]:
    server = server if server is not None else Server()
    client = Client()
    pump = iosim.connect(
        server, ReactorTransport(server, isServer=True),
        client, iosim.FakeTransport(client, isServer=False),
    )
    return client, server, pump


def call(pump: iosim.IOPump, client: amp.AMP, command: type[amp.Command], **kw: Any) -> Any:
    """Call C{command}, pump until quiet, and return its result or Failure."""
    results: list[Any] = []
    client.callRemote(command, **kw).addBoth(results.append)
    pump.flush()
    assert len(results) == 1, f"{command.__name__} got no answer"
    return results[0]


def greet(pump: iosim.IOPump, client: amp.AMP) -> None:
    answer = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="client", user="ann")
    assert answer["version"] == PROTOCOL_VERSION
    client.greeted = True  # as compassd's clients do: the server's notices are welcome now


def failed_with(result: Any, error: type[Exception]) -> Exception:
    assert isinstance(result, Failure), f"expected {error.__name__}, got {result!r}"
    assert result.type is error, result
    return result.value


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# --- the hello gate -------------------------------------------------------------------


def test_a_command_before_hello_is_refused_with_hello_required_and_the_connection_stays() -> None:
    client, server, pump = connect()
    error = failed_with(call(pump, client, Echo, n=1), HelloRequired)
    assert "hello" in str(error) and "test-echo" in str(error)
    assert client.alive and server.alive
    greet(pump, client)
    assert call(pump, client, Echo, n=5) == {"n": 5}


def test_a_command_before_hello_is_refused_even_if_its_arguments_are_malformed() -> None:
    client, server, pump = connect()
    results: list[Any] = []
    client.callRemoteString(b"test-echo", n=b"not a number").addBoth(results.append)
    pump.flush()
    assert results[0].value.errorCode == HelloRequired.code


def test_the_tracker_refuses_a_hello_without_a_shared_version_and_keeps_the_connection() -> None:
    tracker = TrackerService(reactor=Clock())
    tracker.startService()
    client, server, pump = connect(TrackerConnection(tracker))
    error = failed_with(
        call(pump, client, Hello, versions=[PROTOCOL_VERSION + 1, 0], role="client"),
        UnsupportedVersion,
    )
    assert str(PROTOCOL_VERSION + 1) in str(error)
    assert not server.greeted and server.alive
    answer = call(pump, client, Hello, versions=[PROTOCOL_VERSION, PROTOCOL_VERSION + 1],
                  role="client", user="ann")
    assert answer["version"] == PROTOCOL_VERSION and answer["user"] == "ann"


def test_a_peer_refuses_a_hello_without_a_shared_version() -> None:
    client, server, pump = connect()
    failed_with(call(pump, client, Hello, versions=[99], role="client"), UnsupportedVersion)
    failed_with(call(pump, client, Echo, n=1), HelloRequired)


# --- error discipline -----------------------------------------------------------------


def test_malformed_arguments_are_answered_with_bad_request_and_the_connection_stays() -> None:
    client, server, pump = connect()
    greet(pump, client)
    results: list[Any] = []
    client.callRemoteString(b"test-echo", n=b"seven").addBoth(results.append)
    client.callRemoteString(b"test-echo").addBoth(results.append)  # n is missing
    client.callRemoteString(b"test-echo", n=b"1", text=b"\xff\xfe").addBoth(results.append)
    pump.flush()
    assert len(results) == 3
    for result in results:
        assert isinstance(result, Failure)
        assert result.value.errorCode == BadRequest.code
        assert "test-echo" in str(result.value)
    assert client.alive and server.alive
    assert call(pump, client, Echo, n=2) == {"n": 2}


def test_a_declared_error_reaches_the_caller_as_its_class() -> None:
    client, server, pump = connect()
    greet(pump, client)
    error = failed_with(call(pump, client, Refuse), NoSuchKey)
    assert str(error) == "No device key of that name is known."
    assert server.alive


@pytest.mark.parametrize("later", [False, True], ids=["raised", "failed-deferred"])
def test_an_unexpected_exception_in_a_responder_is_an_internal_error_and_is_logged(
    later: bool, logged: list[dict[str, Any]]
) -> None:
    client, server, pump = connect()
    greet(pump, client)
    error = failed_with(call(pump, client, Boom, later=later), InternalError)
    assert "test-boom" in str(error) and "the disk ate it" in str(error)
    assert client.alive and server.alive
    assert call(pump, client, Echo, n=3) == {"n": 3}
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(ZeroDivisionError)
    assert failures[0]["command"] == "test-boom"


def test_an_unknown_asked_command_is_unhandled_and_the_connection_stays() -> None:
    client, server, pump = connect()
    greet(pump, client)
    result = call(pump, client, Unknown)
    assert isinstance(result, Failure) and result.check(amp.UnhandledCommand)
    assert server.alive
    assert call(pump, client, Echo, n=4) == {"n": 4}


def test_an_unknown_notice_is_ignored_instead_of_dropping_the_connection() -> None:
    client, server, pump = connect()
    greet(pump, client)
    client.callRemote(UnknownNotice)
    pump.flush()
    assert server.alive and client.alive
    assert call(pump, client, Echo, n=6) == {"n": 6}


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01\x00" + b"k" * 256,  # a key longer than AMP's 255 bytes
        b"\x00\x00",  # an empty box
        b"\x00\x03abc\x00\x01x\x00\x00",  # a box that is neither command nor answer
    ],
    ids=["key-too-long", "empty-box", "no-command"],
)
def test_bytes_that_are_not_amp_close_that_connection_only(garbage: bytes) -> None:
    bad_client, bad_server, bad_pump = connect()
    good_client, good_server, good_pump = connect()
    greet(bad_pump, bad_client)
    greet(good_pump, good_client)
    bad_client.transport.write(garbage)
    bad_pump.flush()
    assert not bad_server.alive and not bad_client.alive
    assert good_server.alive
    assert call(good_pump, good_client, Echo, n=8) == {"n": 8}


# --- raw byte runs --------------------------------------------------------------------


def test_a_raw_run_pipelined_with_the_next_box_reaches_the_sink_and_the_box_is_served() -> None:
    client, server, pump = connect()
    greet(pump, client)
    data = bytes(range(256)) * 300  # 76,800 bytes: more than one AMP value could hold
    results: list[Any] = []
    client.callRemote(Put, size=len(data)).addBoth(results.append)
    client.transport.write(data)  # the bytes right behind the box, in the same write
    client.callRemote(Echo, n=9).addBoth(results.append)
    pump.flush()
    assert results[0]["size"] == len(data)
    assert results[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert results[1] == {"n": 9}
    assert server.received == [data]


def test_raw_bytes_that_look_like_boxes_are_data_not_commands() -> None:
    client, server, pump = connect()
    greet(pump, client)
    fake_box = Echo.makeArguments({"n": 1}, None)
    fake_box[b"_command"] = b"test-echo"
    fake_box[b"_ask"] = b"999"
    data = fake_box.serialize()
    result = _put(pump, client, data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert server.received == [data]


def _put(pump: iosim.IOPump, client: amp.AMP, data: bytes) -> Any:
    results: list[Any] = []
    client.callRemote(Put, size=len(data)).addBoth(results.append)
    client.transport.write(data)
    pump.flush()
    return results[0]


def test_two_raw_runs_in_a_row_stay_separate() -> None:
    client, server, pump = connect()
    greet(pump, client)
    results: list[Any] = []
    for data in (b"first" * 10, b"second" * 7):
        client.callRemote(Put, size=len(data)).addBoth(results.append)
        client.transport.write(data)
    pump.flush()
    assert [r["size"] for r in results] == [50, 42]
    assert server.received == [b"first" * 10, b"second" * 7]


def test_an_empty_raw_run_is_done_at_once() -> None:
    client, server, pump = connect()
    greet(pump, client)
    assert _put(pump, client, b"")["size"] == 0
    assert call(pump, client, Echo, n=10) == {"n": 10}


def _boxes(raw: bytes) -> list[amp.AmpBox]:
    return amp.parseString(raw)


def _wire(command: type[amp.Command], ask: bytes, **arguments: Any) -> bytes:
    box = command.makeArguments(arguments, None)
    box[b"_command"] = command.commandName
    box[b"_ask"] = ask
    return box.serialize()


def _greeted_server_on_string_transport() -> tuple[Server, StringTransport]:
    server = Server()
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(_wire(Hello, b"1", versions=[PROTOCOL_VERSION], role="client"))
    assert server.greeted
    transport.clear()
    return server, transport


def test_a_raw_run_split_over_many_small_writes_is_reassembled() -> None:
    server, transport = _greeted_server_on_string_transport()
    data = bytes(i % 251 for i in range(5000))
    stream = _wire(Put, b"2", size=len(data)) + data + _wire(Echo, b"3", n=11)
    for start in range(0, len(stream), 7):  # 7-byte pieces cut boxes and data anywhere
        server.dataReceived(stream[start : start + 7])
    answers = _boxes(transport.value())
    assert [box[b"_answer"] for box in answers] == [b"2", b"3"]
    assert answers[0][b"size"] == str(len(data)).encode()
    assert answers[0][b"sha256"] == hashlib.sha256(data).hexdigest().encode()
    assert int(answers[0][b"pieces"]) > 100  # it was delivered as it came, not buffered
    assert answers[1][b"n"] == b"11"
    assert server.received == [data]


def test_a_raw_run_cut_short_by_a_lost_connection_fails_its_deferred() -> None:
    server = CompassPeer()
    server.makeConnection(StringTransport())
    got: list[bytes] = []
    outcome: list[Any] = []
    server.expect_raw(10, got.append).addBoth(outcome.append)
    server.dataReceived(b"abc")
    server.connectionLost(Failure(ConnectionDone()))
    assert got == [b"abc"]
    assert isinstance(outcome[0], Failure) and outcome[0].check(ConnectionDone)


def test_a_second_raw_run_cannot_start_while_one_is_running() -> None:
    server = CompassPeer()
    server.makeConnection(StringTransport())
    server.expect_raw(3, lambda data: None)
    with pytest.raises(RuntimeError):
        server.expect_raw(3, lambda data: None)


class _SocketLike(StringTransport):
    """A transport with a TCP connection's read size and write limit."""

    bufferSize = 1 << 16
    SEND_LIMIT = 1 << 17


class _BulkServer(Server):
    bulk_buffer = 1 << 20


def test_a_bulk_connection_reads_boxes_at_twisteds_size_and_long_raw_runs_in_bulk() -> None:
    # A read allocates its whole size first: 1 MiB per small run's box cost an mmap,
    # mremap and munmap each time. Only a raw run longer than one read is read in bulk.
    server = _BulkServer()
    transport = _SocketLike()
    server.makeConnection(transport)
    server.dataReceived(_wire(Hello, b"1", versions=[PROTOCOL_VERSION], role="client"))
    assert (transport.bufferSize, transport.SEND_LIMIT) == (1 << 16, 1 << 20)
    big = bytes(300_000)
    server.dataReceived(_wire(Put, b"2", size=len(big)) + big[:1000])
    assert transport.bufferSize == 1 << 20  # the run goes on: read in bulk
    server.dataReceived(big[1000:] + _wire(Put, b"3", size=5) + b"small")
    assert transport.bufferSize == 1 << 16  # done, and a short run stays at 64 KiB
    assert server.received == [big, b"small"]
    server.dataReceived(_wire(Put, b"4", size=len(big)))
    assert transport.bufferSize == 1 << 20
    server.connectionLost(Failure(ConnectionDone()))


class _CountingServer(Server):
    """Counts the strings AMP's own parser handles one by one."""

    strings = 0

    def stringReceived(self, string: bytes) -> None:
        self.strings += 1
        super().stringReceived(string)


def _stream() -> bytes:
    """Boxes, a raw run between them, and one box past the server's key limit."""
    data = bytes(i % 253 for i in range(700))
    return (_wire(Echo, b"2", n=1) + _wire(Put, b"3", size=len(data)) + data
            + _wire(Echo, b"4", n=2, text="x" * 300) + _wire(Echo, b"5", n=3)
            + amp.AmpBox({b"k%d" % i: b"" for i in range(9)}).serialize())


def _served(pieces: list[bytes]) -> tuple[list[amp.AmpBox], list[bytes], bool]:
    """The answers (without the count of pieces a raw run came in), the raw runs
    received and whether the connection was closed."""
    server = _CountingServer()
    server.box_limits = BoxLimits(max_keys=8)
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(_wire(Hello, b"1", versions=[PROTOCOL_VERSION], role="client"))
    for piece in pieces:
        server.dataReceived(piece)
    answers = _boxes(transport.value())
    for box in answers:
        box.pop(b"pieces", None)
    return answers, server.received, transport.disconnecting


def test_whole_boxes_are_parsed_in_one_pass_not_string_by_string() -> None:
    server = _CountingServer()
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(_wire(Hello, b"1", versions=[PROTOCOL_VERSION], role="client")
                        + _wire(Echo, b"2", n=1) + _wire(Echo, b"3", n=2, text="t"))
    assert [box.get(b"n") for box in _boxes(transport.value())] == [None, b"1", b"2"]
    assert server.strings == 0
    server.dataReceived(_wire(Echo, b"4", n=3)[:9])  # a box cut short: AMP's parser has it
    assert server.strings == 2  # its first key and value


def test_a_stream_cut_anywhere_is_served_as_the_whole_stream() -> None:
    stream = _stream()
    whole = _served([stream])
    assert [box[b"_answer"] for box in whole[0]] == [b"1", b"2", b"3", b"4", b"5"]
    assert whole[2]  # the box with 9 keys closed the connection, as AMP's parser does
    for cut in range(len(stream) + 1):
        assert _served([stream[:cut], stream[cut:]]) == whole, cut
    for size in (1, 3, 64, 1000):
        assert _served([stream[i:i + size] for i in range(0, len(stream), size)]) == whole


def test_both_ends_of_a_real_loopback_connection_send_without_delay() -> None:
    # Nagle's algorithm would hold a small box back until the last one is acknowledged:
    # 40 ms for a run whose answer follows a write.
    import socket

    from twisted.internet.defer import succeed
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Factory

    from compassd.client import _reactor

    reactor = _reactor.reactor()
    servers: list[Server] = []

    def build() -> Server:
        servers.append(Server())
        return servers[-1]

    port = _reactor.call(lambda: succeed(reactor.listenTCP(
        0, Factory.forProtocol(build), interface="127.0.0.1")))
    try:
        client = _reactor.call(lambda: connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Client()))
        _reactor.call(client.callRemote, Hello, versions=[PROTOCOL_VERSION], role="client",
                      timeout=10)  # answered: the board's end is connected too

        def options() -> Any:
            return succeed([peer.transport.getHandle().getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY) for peer in (client, *servers)])

        assert all(_reactor.call(options)) and len(servers) == 1
        _reactor.call(lambda: succeed(client.transport.loseConnection()))
    finally:
        _reactor.call(port.stopListening)


# --- work after the answer ------------------------------------------------------------


def test_notices_queued_in_a_responder_are_written_after_its_answer() -> None:
    server, transport = _greeted_server_on_string_transport()
    server.dataReceived(_wire(Poke, b"7", count=3))
    boxes = _boxes(transport.value())
    assert boxes[0][b"_answer"] == b"7"
    assert [(b[b"_command"], b[b"index"]) for b in boxes[1:]] == [
        (b"test-poked", b"0"), (b"test-poked", b"1"), (b"test-poked", b"2"),
    ]


def test_a_client_sees_the_answer_before_the_notices_it_caused() -> None:
    client, server, pump = connect()
    greet(pump, client)
    client.callRemote(Poke, count=2).addCallback(
        lambda answer: client.events.append(("answer", answer["done"]))
    )
    pump.flush()
    assert client.events == [("answer", True), ("poked", 0), ("poked", 1)]


def test_an_answer_that_comes_later_is_not_overtaken_by_notices_meanwhile() -> None:
    client, server, pump = connect()
    greet(pump, client)
    client.callRemote(Later).addCallback(
        lambda answer: client.events.append(("answer", answer["done"])))
    pump.flush()
    # While the answer waits, a notice is queued (from outside any responder) and a
    # quick command that queues its own is answered: no notice goes out yet.
    server.after_dispatch(lambda: server.callRemote(Poked, index=0))
    client.callRemote(Poke, count=1).addCallback(
        lambda answer: client.events.append(("poke answered", answer["done"])))
    pump.flush()
    assert client.events == [("poke answered", True)]

    server.later_answer.callback(None)
    pump.flush()

    assert client.events == [("poke answered", True), ("answer", True), ("poked", 0),
                             ("poked", 0)]
    # The hold is over: a notice queued now goes out at once.
    server.after_dispatch(lambda: server.callRemote(Poked, index=1))
    pump.flush()
    assert client.events[-1] == ("poked", 1)


def test_after_dispatch_outside_a_responder_runs_at_once() -> None:
    server = CompassPeer()
    server.makeConnection(StringTransport())
    ran: list[int] = []
    server.after_dispatch(lambda: ran.append(1))
    assert ran == [1]
