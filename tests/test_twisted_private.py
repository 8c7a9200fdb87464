"""compassd/_twisted_private.py: each private Twisted name it relies on still does what
compassd needs. A failure here means a Twisted release changed one: fix that module (and
only it) before anything else."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from twisted.application.internet import ClientService
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd import _twisted_private as private


class Add(amp.Command):
    commandName = b"add"
    arguments = [(b"left-side", amp.Integer()), (b"from", amp.Integer())]
    response = [(b"sum", amp.Integer())]


class Adder(amp.AMP):
    @Add.responder
    def add(self, left_side: int, From: int) -> dict[str, int]:
        return {"sum": left_side + From}


def test_python_name_is_amps_name_for_an_argument() -> None:
    assert private.python_name(b"left-side") == "left_side"
    assert private.python_name(b"from") == "From"  # AMP capitalises Python keywords
    box = amp.AmpBox({b"left-side": b"2", b"from": b"3"})
    assert Add.parseArguments(box, amp.AMP()) == {"left_side": 2, "From": 3}


def _pair(server: amp.AMP) -> tuple[amp.AMP, iosim.IOPump]:
    client = amp.AMP()
    pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                         client, iosim.FakeTransport(client, isServer=False), greet=False)
    return client, pump


def test_send_box_sends_an_encoded_command_and_returns_its_answer() -> None:
    client, pump = _pair(Adder())
    answers: list[Any] = []
    d = private.send_box(client, b"add", amp.AmpBox({b"left-side": b"2", b"from": b"40"}),
                         True)
    assert isinstance(d, Deferred)
    d.addBoth(answers.append)
    pump.flush()
    assert [answer[b"sum"] for answer in answers] == [b"42"]
    assert private.send_box(client, b"add", amp.AmpBox({b"left-side": b"1", b"from": b"1"}),
                            False) is None


def test_responder_serialization_uses_the_subclasss_callable_or_else_amps() -> None:
    seen: list[Any] = []

    class Custom(private.ResponderSerialization):
        @Add.responder
        def add(self, left_side: int, From: int) -> dict[str, int]:
            return {"sum": left_side + From}

        def serialize_responder(self, responder: Any, command: type[amp.Command]) -> Any:
            seen.append((responder.__name__, command))
            if self.mine:
                return lambda box: succeed(amp.AmpBox({b"sum": b"7"}))
            return None

    for mine, expected in ((True, 7), (False, 5)):
        server = Custom()
        server.mine = mine  # type: ignore[attr-defined]
        client, pump = _pair(server)
        answers: list[Any] = []
        client.callRemote(Add, left_side=2, From=3).addBoth(answers.append)
        pump.flush()
        assert answers == [{"sum": expected}]
    assert seen == [("add", Add), ("add", Add)]


def test_take_unparsed_takes_what_a_paused_parser_holds() -> None:
    protocol = Adder()
    protocol.makeConnection(StringTransport())
    protocol.paused = True
    protocol.dataReceived(b"\x00\x04_ask")
    assert private.take_unparsed(protocol) == b"\x00\x04_ask"
    assert private.take_unparsed(protocol) == b""


def test_stdio_writer_is_the_pipe_standard_io_writes_to() -> None:
    read_end, write_end = os.pipe()
    try:
        stdio = StandardIO(Protocol(), stdin=read_end, stdout=write_end,
                           reactor=MemoryReactor())
        writer = private.stdio_writer(stdio)
        assert isinstance(writer, FileDescriptor)
        assert writer.fileno() == write_end
    finally:
        os.close(read_end)
        os.close(write_end)
    assert private.stdio_writer(StringTransport()) is None


def test_has_unwritten_sees_a_write_not_yet_flushed_unless_closing_for_writing() -> None:
    descriptor = FileDescriptor(reactor=MemoryReactor())
    descriptor.connected = True
    assert not private.has_unwritten(descriptor)
    descriptor.write(b"waiting")
    assert descriptor.dataBuffer == b""  # it is in the private buffer
    assert private.has_unwritten(descriptor)
    descriptor.loseWriteConnection()
    assert not private.has_unwritten(descriptor)


class _Endpoint:
    """Connects at once, over a memory transport."""

    def connect(self, factory: Factory) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return succeed(protocol)


@pytest.mark.parametrize("forget", [False, True])
def test_forget_lost_notification_keeps_client_service_from_a_loss_it_cannot_handle(
        forget: bool) -> None:
    """The board's tracker link refuses a connection in prepareConnection and then drops
    it: ClientService has no transition for that loss and fails, unless it was told to
    forget it."""
    prepared: list[Any] = []
    failures: list[Any] = []

    def refuse(protocol: Any) -> Deferred[None]:
        prepared.append(protocol)
        return fail(RuntimeError("refused"))

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    service = ClientService(_Endpoint(), Factory.forProtocol(Protocol),
                            retryPolicy=lambda attempt: 60.0, clock=Clock(),
                            prepareConnection=refuse)
    globalLogPublisher.addObserver(observe)
    try:
        service.startService()
        (protocol,) = prepared
        if forget:
            private.forget_lost_notification(protocol)
        try:
            protocol.connectionLost(Failure(ConnectionDone()))
        except Exception as e:  # automat's NoTransition
            failures.append(e)
        service.stopService()
    finally:
        globalLogPublisher.removeObserver(observe)
    if forget:
        assert failures == []
    else:
        assert failures, "ClientService took the loss: the workaround may be moot now"


def test_replace_ssl_options_changes_what_an_ssl_endpoint_listens_with() -> None:
    reactor = MemoryReactor()
    old, new = object(), object()
    endpoint = SSL4ServerEndpoint(reactor, 0, old)
    given: list[Any] = []
    private.replace_ssl_options(endpoint, lambda o: given.append(o) or new)
    assert given == [old]
    endpoint.listen(Factory.forProtocol(Protocol))
    ((_, _, options, _, _),) = reactor.sslServers
    assert options is new


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd is Linux's")
def test_systemd_sockets_reads_twisteds_record_of_what_systemd_passed() -> None:
    """A process started with LISTEN_PID (its own pid) and LISTEN_FDS sees them through
    Twisted's record, even after Twisted removed them from the environment."""
    check = ("from compassd._twisted_private import systemd_sockets\n"
             "import os\n"
             "print(systemd_sockets(), os.environ.get('LISTEN_FDS'))\n")
    script = f'LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=a:b exec "{sys.executable}" -c "$0"'
    done = subprocess.run(["/bin/sh", "-c", script, check], capture_output=True, text=True,
                          timeout=60, check=True)
    found = done.stdout.split()[0]
    assert found == "2", done.stdout + done.stderr
    assert private.systemd_sockets() == 0


def test_hostname_verify_callback_is_twisteds_name_check_where_it_has_one() -> None:
    """Twisted 24 and later check the peer's name in a verify callback compassd must keep
    (test_tls shows a wrong name refused end to end); 22.4 checks it elsewhere."""
    from twisted.internet.ssl import optionsForClientTLS

    from twisted import version

    check = private.hostname_verify_callback(optionsForClientTLS("example.com"), object())
    if version.major >= 24:
        assert callable(check)
    else:
        assert check is None
