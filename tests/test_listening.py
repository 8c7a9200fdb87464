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
