"""Addresses as people write them (compassd.addresses): one grammar for every option."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from compassd import addresses
from compassd.addresses import (
    DEFAULT_PORT,
    advertised_address,
    client_endpoint,
    dial_address,
    format_address,
    parse_address,
)
from compassd.client import _reactor

PORTS = st.integers(min_value=1, max_value=65535)
NAMES = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z")
HOSTS = NAMES | st.ip_addresses().map(str)


@pytest.mark.parametrize(
    "text, default, expected",
    [
        ("tracker.lab:9000", DEFAULT_PORT, ("tracker.lab", 9000)),
        ("10.0.0.5:1", DEFAULT_PORT, ("10.0.0.5", 1)),
        ("tracker.lab", DEFAULT_PORT, ("tracker.lab", 9190)),
        ("tracker.lab", 9191, ("tracker.lab", 9191)),
        ("[::1]:9190", DEFAULT_PORT, ("::1", 9190)),
        ("[fe80::1%eth0]:65535", DEFAULT_PORT, ("fe80::1%eth0", 65535)),
        ("[::1]", 7, ("::1", 7)),
        ("fd00::5", DEFAULT_PORT, ("fd00::5", 9190)),  # a bare IPv6 address has no port
    ],
)
def test_parse_address_splits_host_and_port(
    text: str, default: int, expected: tuple[str, int]
) -> None:
    assert parse_address(text, default) == expected


@pytest.mark.parametrize(
    "text, default, message",
    [
        ("[::1:9190", DEFAULT_PORT, "opens [ but does not close it"),
        ("[::1]9190", DEFAULT_PORT, "something other than :PORT after ]"),
        (":9190", DEFAULT_PORT, "is not HOST:PORT"),
        ("[]:9190", DEFAULT_PORT, "is not HOST:PORT"),
        ("host:0", DEFAULT_PORT, "is not HOST:PORT"),
        ("host:65536", DEFAULT_PORT, "is not HOST:PORT"),
        ("host", 0, "is not HOST:PORT"),  # a board address must name its port
        ("", DEFAULT_PORT, "is not HOST:PORT"),
        ("host:http", DEFAULT_PORT, "http"),  # int()'s own words, for now
    ],
)
def test_parse_address_refuses_bad_text_with_a_reason(
    text: str, default: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_address(text, default)


@given(HOSTS, PORTS)
def test_a_formatted_address_parses_back_to_its_host_and_port(host: str, port: int) -> None:
    assert parse_address(format_address(host, port)) == (host, port)


@given(HOSTS, PORTS)
def test_an_address_without_its_port_takes_the_default(host: str, port: int) -> None:
    assert parse_address(f"[{host}]" if ":" in host else host, port) == (host, port)


@given(HOSTS, PORTS)
def test_client_endpoint_turns_an_address_into_a_tcp_endpoint_for_it(
    host: str, port: int
) -> None:
    escaped = host.replace(":", "\\:")
    assert client_endpoint(format_address(host, port)) == f"tcp:host={escaped}:port={port}"


@pytest.mark.parametrize(
    "text",
    ["tcp:host=tracker.lab:port=9190", "tcp:tracker.lab:9190", "tcp:127.0.0.1:9190:timeout=5",
     "tls:tracker.lab:9190", "tls:host=tracker.lab:port=9190", "ssl:host=t:port=1",
     "ssl:t:1", "unix:path=/run/compass.sock", "unix:/run/compass.sock"],
)
def test_client_endpoint_passes_endpoint_strings_through(text: str) -> None:
    assert client_endpoint(text) == text


def test_the_positional_tcp_form_dials_its_host_and_port() -> None:
    reactor = MemoryReactorClock()
    clientFromString(reactor, client_endpoint("tcp:127.0.0.1:9190")).connect(
        Factory.forProtocol(Protocol))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 9190)]


@pytest.mark.parametrize("text, reason", [
    ("tcp:127.0.0.1", "port"),
    ("tcp:host=t.lab:port=http", "http"),
    ("tcp:t.lab:9190:colour=blue", "colour"),
    ("tls:host=t.lab:port=9190:ca=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
    ("tls:t.lab:9190:trustRoots=/nonexistent/ca", "/nonexistent/ca"),
])
def test_an_endpoint_string_that_cannot_work_is_refused_with_twisteds_reason(
    text: str, reason: str
) -> None:
    with pytest.raises(ValueError) as e:
        client_endpoint(text)
    assert str(e.value).startswith(f"{text!r} is not a client endpoint string that can work:")
    assert reason in str(e.value)


@pytest.mark.parametrize("text, expected", [
    ("board.lab:9191", "board.lab:9191"),
    ("[fd00::5]:9191", "[fd00::5]:9191"),
    ("tcp:board.lab:9191", "board.lab:9191"),
    ("tcp:host=board.lab:port=9191", "board.lab:9191"),
    ("tcp:host=fd00\\:\\:5:port=9191", "[fd00::5]:9191"),
])
def test_dial_address_takes_host_port_and_tcp_endpoints(text: str, expected: str) -> None:
    assert dial_address(text) == expected


@pytest.mark.parametrize("text, message", [
    ("unix:/run/board.sock", "clients dial this address over TCP"),
    ("tcp:board.lab", "does not name a host and a port"),
    ("board.lab", "is not HOST:PORT"),
])
def test_dial_address_refuses_what_no_client_can_dial(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dial_address(text)


def test_client_endpoint_refuses_what_is_neither() -> None:
    with pytest.raises(ValueError, match="opens \\["):
        client_endpoint("[::1")
    with pytest.raises(ValueError, match="'host:0' is not HOST:PORT"):
        client_endpoint("host:0")


def _listener(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except OSError as e:
        sock.close()
        pytest.skip(f"{host} is not available here: {e}")
    sock.listen(1)
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"),
                                          (socket.AF_INET6, "::1")])
def test_the_endpoint_string_for_an_address_reaches_that_address(family: int,
                                                                  host: str) -> None:
    with _listener(family, host) as listening:
        port = listening.getsockname()[1]
        text = client_endpoint(format_address(host, port))

        def dial() -> Any:
            endpoint = clientFromString(_reactor.reactor(), text)
            return endpoint.connect(Factory.forProtocol(Protocol))

        protocol = _reactor.call(dial, timeout=10)
        try:
            accepted, peer = listening.accept()
            accepted.close()
        finally:
            _reactor.call(lambda: protocol.transport.loseConnection())
    assert peer[0] == host


def test_advertised_address_names_this_machine_for_a_wildcard(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(addresses.socket, "getfqdn", lambda: "board7.lab")
    assert advertised_address("0.0.0.0", 9191) == "board7.lab:9191"
    assert advertised_address("::", 9191) == "board7.lab:9191"
    assert advertised_address("", 9191) == "board7.lab:9191"
    assert advertised_address("10.0.0.5", 9191) == "10.0.0.5:9191"
    assert advertised_address("fd00::5", 9191) == "[fd00::5]:9191"
