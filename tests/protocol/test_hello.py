"""The hello responder the tracker, the board server and the proxy share.

A small daemon built on L{HelloResponder} shows the checks every daemon makes, in memory
over L{twisted.test.iosim}; each daemon's own tests show its L{HelloResponder.welcome}.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.test import iosim

from compassd import __version__
from compassd.protocol import (
    PROTOCOL_VERSION,
    BadRequest,
    CompassCommand,
    Hello,
    HelloRequired,
    NotAuthorized,
    UnsupportedVersion,
)
from compassd.protocol.hello import Greeting, HelloResponder, software_name
from compassd.protocol.limits import MAX_TEXT
from compassd.protocol.peer import CompassPeer
from compassd.proxy.connection import ProxyConnection
from compassd.server.session import SessionConnection
from compassd.tracker.connection import TrackerPeer


class Ping(CompassCommand):
    commandName = b"test-hello-ping"
    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"user", amp.Unicode())]


class Daemon(HelloResponder):
    """Serves clients and admins; an admin needs the token "sesame"."""

    daemon = "test daemon"
    software = software_name("test")
    roles = frozenset({"client", "admin"})

    def __init__(self) -> None:
        super().__init__()
        self.greetings: list[Greeting] = []
        self.user = ""

    def welcome(self, greeting: Greeting) -> dict[str, Any]:
        self.greetings.append(greeting)
        if greeting.role == "admin" and greeting.token != "sesame":
            raise NotAuthorized("An admin needs the right token.")
        self.user = greeting.user or "anonymous"
        return self.welcomed(greeting, self.user, {greeting.role})

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        return {"user": self.user}


def connect() -> tuple[Daemon, CompassPeer, iosim.IOPump]:
    server, client = Daemon(), CompassPeer()
    pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                         client, iosim.FakeTransport(client, isServer=False), greet=False)
    pump.flush()
    return server, client, pump


def call(pump: iosim.IOPump, client: CompassPeer, command: type[amp.Command],
         **kw: Any) -> Any:
    results: list[Any] = []
    d: Deferred[Any] = client.callRemote(command, **kw)
    d.addBoth(results.append)
    pump.flush()
    assert len(results) == 1, "no answer came"
    return results[0]


def error(result: Any, kind: type[Exception]) -> str:
    assert not isinstance(result, dict), f"answered {result!r}, expected {kind.__name__}"
    assert result.check(kind), result
    return str(result.value)


def test_a_hello_is_answered_with_the_version_chosen_and_the_daemons_software() -> None:
    server, client, pump = connect()
    answer = call(pump, client, Hello, versions=[PROTOCOL_VERSION, 99], role="client",
                  user="ada", software="test-client 1")
    assert answer == {"version": PROTOCOL_VERSION, "user": "ada", "roles": ["client"],
                      "software": f"compassd {__version__} test (protocol {PROTOCOL_VERSION})",
                      "features": None, "active": None}  # no features; not a standby
    (greeting,) = server.greetings
    assert greeting.software_text == "test-client 1"
    assert greeting.arguments() == {"versions": [PROTOCOL_VERSION, 99], "role": "client",
                                    "token": None, "user": "ada", "software": "test-client 1"}
    assert server.greeted
    assert call(pump, client, Ping) == {"user": "ada"}


def test_a_second_hello_is_refused_and_the_first_one_stands() -> None:
    server, client, pump = connect()
    call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="client", user="ada")
    again = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="client", user="bob")
    assert "already said hello" in error(again, BadRequest)
    assert len(server.greetings) == 1
    assert call(pump, client, Ping) == {"user": "ada"}


def test_no_shared_version_is_refused_naming_both_sides_and_the_connection_stays() -> None:
    server, client, pump = connect()
    refused = call(pump, client, Hello, versions=[PROTOCOL_VERSION + 1], role="client")
    text = error(refused, UnsupportedVersion)
    assert text.startswith("This test daemon speaks protocol versions [")
    assert f"you offered [{PROTOCOL_VERSION + 1}]" in text
    assert server.greetings == [] and not server.greeted
    assert error(call(pump, client, Ping), HelloRequired)
    answer = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="client")
    assert answer["user"] == "anonymous"


def test_a_role_the_daemon_does_not_serve_is_refused_before_welcome_is_asked() -> None:
    server, client, pump = connect()
    refused = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="board")
    assert error(refused, BadRequest) == (
        "This test daemon serves admin and client connections; a 'board' has nothing to"
        " do here.")
    assert server.greetings == []


def test_a_refusal_from_welcome_leaves_the_connection_open_for_another_hello() -> None:
    server, client, pump = connect()
    refused = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="admin", token="x")
    assert error(refused, NotAuthorized) == "An admin needs the right token."
    assert not server.greeted
    answer = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="admin",
                  token="sesame", user="root")
    assert answer["roles"] == ["admin"]


def test_an_overlong_software_name_is_refused_with_the_limit() -> None:
    server, client, pump = connect()
    refused = call(pump, client, Hello, versions=[PROTOCOL_VERSION], role="client",
                   software="s" * (MAX_TEXT + 1))
    assert f"the limit is {MAX_TEXT}" in error(refused, BadRequest)
    assert server.greetings == []


@pytest.mark.parametrize(("peer", "daemon", "software", "roles"), [
    (TrackerPeer, "tracker", "tracker", None),
    (SessionConnection, "board", "server", frozenset({"client"})),
    (ProxyConnection, "proxy", "proxy", frozenset({"board", "client"})),
])
def test_each_daemon_answers_hello_with_the_shared_responder(
        peer: type[HelloResponder], daemon: str, software: str,
        roles: frozenset[str] | None) -> None:
    assert peer.hello is HelloResponder.hello
    assert (peer.daemon, peer.software, peer.roles) == (daemon, software_name(software), roles)
