"""Ctrl-C in a real terminal: ``compass run`` waiting in a queue exits 130 with
``compass: interrupted`` and its request leaves the tracker's queue.

The command runs in a pseudo-terminal it has as its controlling terminal; the test types
Ctrl-C into it, so the terminal sends SIGINT to the command as a shell's would. The
process is reaped by its PID with a deadline (SIGKILL if it outlives it).
"""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_tracker
from tests.helpers import daemon_env, registered_board

pytestmark = pytest.mark.slow

KEY = "npu-x2"
DEADLINE = 30.0


@pytest.fixture
def tracker_args() -> tuple[str, ...]:
    return ("--heartbeat-timeout", "600")  # the registered board sends no heartbeats


def _read(fd: int, until: float) -> bytes:
    """What the terminal shows within the time left (b"" once the child has gone)."""
    ready, _, _ = select.select([fd], [], [], max(0.0, min(0.2, until - time.monotonic())))
    if not ready:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the child closed its end
        return b""


def _waiting(address: tuple[str, int]) -> int:
    with connect_tracker(*address, user="observer", timeout=5) as t:
        return sum(q["count"] for q in t.summary()["queues"] if q["key"] == KEY)


def test_ctrl_c_while_queued_exits_130_says_interrupted_and_cancels_the_request(
    tracker: tuple[str, int], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    (tmp_path / "m.onnx").write_bytes(b"not needed: the run never gets a board")
    with registered_board(tracker, key=KEY), \
            connect_tracker(*tracker, user="alice", timeout=5) as alice, \
            alice.request(KEY, wait=10):
        argv = [sys.executable, "-c", "from compassd.cli import run; run()",
                "--tracker", f"{tracker[0]}:{tracker[1]}", "--user", "bob", "run",
                "--key", KEY, str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"),
                "--wait", "600"]
        env = daemon_env()
        pid, terminal = pty.fork()
        if pid == 0:  # the child: exec at once, whatever happens
            try:
                os.chdir(tmp_path)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        shown = b""
        status = None
        try:
            end = time.monotonic() + DEADLINE
            while _waiting(tracker) == 0:
                assert time.monotonic() < end, f"compass run never queued:\n{shown!r}"
                shown += _read(terminal, end)
            os.write(terminal, b"\x03")  # Ctrl-C, typed
            end = time.monotonic() + DEADLINE
            while status is None and time.monotonic() < end:
                shown += _read(terminal, end)
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(code)
            shown += _read(terminal, time.monotonic() + 1)
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(terminal)
        text = shown.decode("utf-8", "replace")
        assert status == 130, f"compass run exited with {status}:\n{text}"
        assert "compass: interrupted" in text
        assert "Aborted" not in text and "Traceback" not in text, text
        end = time.monotonic() + DEADLINE
        while _waiting(tracker):
            assert time.monotonic() < end, "the interrupted request is still queued"
            time.sleep(0.05)
