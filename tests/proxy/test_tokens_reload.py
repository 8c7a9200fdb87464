"""compass-proxy reads its tokens file again on SIGHUP, as compass-tracker does (issue 13):
a revoked board token is refused at the next hello, a new one is taken, a connection
already greeted stays up, and a file with a mistake keeps the old tokens and says so.

The proxy is a real ``twistd compass-proxy`` process on 127.0.0.1 in front of a real
tracker; the signal is a real SIGHUP sent to its PID; hellos are raw AMP boxes on
loopback sockets, each answer read with a deadline; the proxy is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from twisted.protocols import amp

from compassd.access import hash_token
from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import board_tracker as bt
from tests.fuzz._inprocess import box
from tests.helpers import daemon_log, start_twistd, stop
from tests.tracker.test_attack_connections import read_box

WAIT = 30.0


def write_tokens(path: Path, *tokens: str) -> None:
    path.write_text("".join(f"{hash_token(token)} user=rack-{i} roles=board\n"
                            for i, token in enumerate(tokens)))


def board_hello(port: int, token: str) -> tuple[socket.socket, amp.AmpBox]:
    """Say hello as a board with C{token}; return the socket and the proxy's answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(box(Hello, 1, versions=[PROTOCOL_VERSION], role="board", token=token))
    return sock, read_box(sock, time.monotonic() + WAIT)


def refused(port: int, token: str) -> bool:
    sock, answer = board_hello(port, token)
    sock.close()
    if amp.ERROR in answer:
        assert answer[b"_error_code"] == b"NOT_AUTHORIZED", answer
        return True
    return False


def hang_up(proxy: subprocess.Popen[bytes], text: str, times: int) -> None:
    """SIGHUP the proxy by its PID; wait until its log has C{text} C{times} times."""
    os.kill(proxy.pid, signal.SIGHUP)
    end = time.monotonic() + WAIT
    while daemon_log(proxy).count(text) < times:
        assert time.monotonic() < end and proxy.poll() is None, daemon_log(proxy)
        time.sleep(0.02)


def test_sighup_reloads_the_tokens_and_a_broken_file_keeps_the_old_ones(
    tracker: tuple[str, int], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    write_tokens(tokens, "board-old")
    proxy, port = start_twistd("compass-proxy", "--tracker", f"{tracker[0]}:{tracker[1]}",
                               "--tokens", str(tokens))
    try:
        greeted, answer = board_hello(port, "board-old")
        assert amp.ERROR not in answer, answer
        assert refused(port, "board-new")

        write_tokens(tokens, "board-new")  # board-old revoked, board-new added
        hang_up(proxy, "reloaded 1 tokens from", 1)
        assert refused(port, "board-old")
        assert not refused(port, "board-new")
        # the connection greeted before the reload is still up: the tracker answers
        # its heartbeat through the proxy
        greeted.sendall(box(bt.Heartbeat, 2))
        beat = read_box(greeted, time.monotonic() + WAIT)
        assert amp.ANSWER in beat, beat
        greeted.close()

        tokens.write_text("this is not a token line\n")
        hang_up(proxy, "kept the old tokens", 1)
        assert not refused(port, "board-new")
        assert refused(port, "board-old")
    finally:
        stop(proxy)
    log = daemon_log(proxy)
    assert "kept the old tokens" in log and "line 1" in log, log
    assert "Traceback" not in log, log
