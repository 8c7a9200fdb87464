"""The conversation between a board behind NAT and ``compass-proxy``.

A board started with ``compass-server --proxy ENDPOINT`` opens its tracker link to the
proxy instead of the tracker. On that *control* connection it speaks the board↔tracker
vocabulary (:mod:`compassd.protocol.board_tracker`) unchanged: the proxy forwards each
command to the tracker on a tracker connection of its own for that board, with the
device's address replaced by the proxy's advertised one, and forwards revocations back.

The proxy adds one command on the control connection, L{Dial}: a client wants a session
on the board, so the board must open a fresh *data* connection to the proxy and name the
channel with L{Attach} as its first box (no hello: the channel is a secret the proxy
just gave the board on its authenticated control connection). After the proxy has opened
the session on that connection for the client, it relays bytes unchanged both ways.

A client reaches a proxied board like any other: hello, then
L{compassd.protocol.session.OpenSession} with the ticket and the device name the tracker
granted (its optional C{device} argument), which the proxy needs to pick the board.
"""

from __future__ import annotations

from twisted.protocols import amp

from ._command import CompassCommand


class Dial(CompassCommand):
    """proxy -> board: connect to the proxy again and attach to C{channel}.

    The answer comes once the new connection is attached, or fails with the reason the
    board could not connect.
    """

    commandName = b"proxy-dial"
    arguments = [(b"channel", amp.Unicode())]
    response = []


class Attach(CompassCommand):
    """board -> proxy, first box of a data connection: this connection is C{channel}."""

    commandName = b"proxy-attach"
    arguments = [(b"channel", amp.Unicode())]
    response = []
