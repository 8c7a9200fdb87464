"""CompassPeer encodes and decodes boxes itself (for speed); it must put exactly the bytes
on the wire that Twisted's AMP would, for every command, both ways."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from compassd.protocol.peer import CompassPeer
from tests.protocol.test_vocabulary import COMMANDS


def _sample(arg: amp.Argument, seed: int) -> Any:
    if isinstance(arg, amp.AmpList):
        return [{_name(w): _sample(a, seed + i) for i, (w, a) in enumerate(arg.subargs)}
                for _ in range(2)]
    if isinstance(arg, amp.ListOf):
        return [_sample(arg.elementType, seed + i) for i in range(3)]
    if isinstance(arg, amp.Boolean):
        return seed % 2 == 0
    if isinstance(arg, amp.Float):
        return seed + 0.25
    if isinstance(arg, amp.Integer):
        return seed * 1_000_003 - 7
    if isinstance(arg, amp.Unicode):
        return f"välue-{seed} ✓"
    if isinstance(arg, amp.String):
        return f"bytes-{seed}".encode()
    raise AssertionError(f"no sample for {arg!r}")


def _name(wire: bytes) -> str:
    return wire.decode("ascii").replace("-", "_")


def _arguments(arglist: list[tuple[bytes, amp.Argument]], skip_optional: bool
               ) -> dict[str, Any]:
    return {_name(wire): _sample(arg, i) for i, (wire, arg) in enumerate(arglist)
            if not (skip_optional and arg.optional)}


def _sent(peer: amp.AMP, command: type[amp.Command], kw: dict[str, Any]) -> bytes:
    transport = StringTransport()
    peer.makeConnection(transport)
    d = peer.callRemote(command, **kw)
    if d is not None:
        d.addErrback(lambda _: None)  # the connection goes with the test
    return transport.value()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.commandName.decode())
@pytest.mark.parametrize("skip_optional", [False, True])
def test_commands_are_the_bytes_amp_would_send(command: type[amp.Command],
                                               skip_optional: bool) -> None:
    kw = _arguments(command.arguments, skip_optional)
    assert _sent(CompassPeer(), command, kw) == _sent(amp.AMP(), command, kw)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.requiresAnswer],
                         ids=lambda c: c.commandName.decode())
def test_answers_are_the_bytes_amp_would_send_and_decode_the_same(
    command: type[amp.Command]
) -> None:
    arguments = _arguments(command.arguments, skip_optional=False)
    answer = _arguments(command.response, skip_optional=False)
    wires = []
    for kind in (CompassPeer, amp.AMP):
        peer = _answering(kind, command, answer)
        peer.greeted = True
        transport = StringTransport()
        peer.makeConnection(transport)
        box = amp.AmpBox({amp.COMMAND: command.commandName, amp.ASK: b"1"})
        box.update(command.makeArguments(arguments, peer))
        peer.dataReceived(box.serialize())
        wires.append(transport.value())
    assert wires[0] == wires[1]
    # and the caller's side reads that answer back as AMP would
    caller = CompassPeer()
    caller.makeConnection(StringTransport())
    got: list[Any] = []
    caller.callRemote(command, **arguments).addBoth(got.append)
    caller.dataReceived(wires[0])
    expected = amp.AMP()
    expected.makeConnection(StringTransport())
    want: list[Any] = []
    expected.callRemote(command, **arguments).addBoth(want.append)
    expected.dataReceived(wires[1])
    assert got == want


def _answering(kind: type[amp.AMP], command: type[amp.Command],
               answer: dict[str, Any]) -> Any:
    """A peer of class C{kind} that answers C{command} with C{answer}."""

    class Answering(kind):  # type: ignore[valid-type,misc]
        @command.responder
        def respond(self, **kw: Any) -> dict[str, Any]:
            return dict(answer)

    return Answering()
