"""A daemon that cannot listen says which endpoint and why, and exits with status 1."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.helpers import ROOT, daemon_env


def test_a_port_in_use_stops_the_daemon_with_a_sentence_and_status_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "--logfile=-", "compass-tracker", "--listen",
             f"tcp:{port}:interface=127.0.0.1"],
            cwd=str(ROOT), env=daemon_env(), capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1, result.stdout
    assert f"compass-tracker cannot listen on tcp:{port}:interface=127.0.0.1" in result.stdout
    assert "Address already in use" in result.stdout


def test_endpoint_scope_tells_loopback_from_network_and_unknown() -> None:
    from compassd.listening import endpoint_scope, is_loopback

    cases = {
        "tcp:9190": "network", "tcp:9190:interface=0.0.0.0": "network",
        "tcp:9190:interface=127.0.0.1": "loopback", "tcp:9190:interface=127.9.9.9": "loopback",
        "tcp:port=9190:interface=127.0.0.1": "loopback",
        "tcp:9190:127.0.0.1": "loopback",  # interface as the second positional
        "TCP:9190:interface=10.1.2.3": "network",
        "tcp6:9190:interface=\\:\\:1": "loopback", "tcp6:9190": "network",
        "ssl:9190:privateKey=k:certKey=c:interface=127.0.0.1": "loopback",
        "ssl:9190:privateKey=k:certKey=c": "network",
        "unix:/run/compass.sock": "local",
        "systemd:domain=INET:index=0": "unknown", "le:/certs:tcp:443": "unknown",
    }
    assert {endpoint: endpoint_scope(endpoint) for endpoint in cases} == cases
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("[::1]")
    assert not is_loopback("localhost") and not is_loopback("") and not is_loopback("::")


def test_cleartext_is_told_apart_from_tls_and_loopback() -> None:
    from compassd.listening import cleartext_host, server_cleartext

    assert cleartext_host("tcp:host=10.0.0.5:port=9190") == "10.0.0.5"
    assert cleartext_host("tcp:tracker.lab:9190") == "tracker.lab"
    assert cleartext_host("tcp:host=127.0.0.1:port=9190") is None
    assert cleartext_host("tcp:host=localhost:port=9190") is None
    assert cleartext_host("tls:host=tracker.lab:port=9190:ca=ca.pem") is None
    assert cleartext_host("unix:path=/run/t.sock") is None
    assert server_cleartext("tcp:9190") and server_cleartext("tcp6:9190")
    assert not server_cleartext("tcp:9190:interface=127.0.0.1")
    assert not server_cleartext("ssl:9190:privateKey=k:certKey=c")
    assert not server_cleartext("unix:/run/t.sock")


def test_the_cleartext_warning_is_logged_once_and_names_how_to_turn_tls_on() -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    from compassd import listening

    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    saved = set(listening._warned)
    listening._warned.clear()
    try:
        assert listening.warn_cleartext("Secrets", "to x", "use ssl:")
        assert not listening.warn_cleartext("Secrets", "to y", "use ssl:")
    finally:
        globalLogPublisher.removeObserver(observer)
        listening._warned.clear()
        listening._warned.update(saved)
    said = [line for line in lines if "without TLS" in line]
    assert len(said) == 1
    assert "Secrets travel without TLS to x" in said[0] and "use ssl:" in said[0]
    assert "Set up TLS for a lab" in said[0]
