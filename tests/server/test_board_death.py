"""Nothing outlives its server: kill -9 a real compass-server during a session, and its
executors die with it; its next start kills and removes whatever is left (executors,
session directories, arenas) and says so in its log.

Real daemons on 127.0.0.1, stopped by PID; every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_tracker
from compassd.server.leftovers import Workdir, process_start_time
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, stop
from tests.server.test_board import finish, start_server, state_is, until

pytestmark = pytest.mark.slow

WAIT = 30.0


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


def _alive(pid: int) -> bool:
    return process_start_time(pid) is not None  # a zombie counts as dead


def _executors(workdir: Path) -> list[int]:
    folder = workdir / "executors"
    return sorted(int(p.name) for p in folder.iterdir()) if folder.is_dir() else []


def test_kill_9_of_the_server_leaves_no_executor_and_the_next_start_cleans_up(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    address = f"{tracker[0]}:{tracker[1]}"
    server, _ = start_server(address, fake_lib, workdir)
    again = None
    leftover = None
    try:
        client = connect_tracker(*tracker)
        until("the board to register", state_is(client, "free"))
        model = tmp_path / "id.bin"
        write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")])
        lease = client.request("demo", wait_for_board=True, wait=WAIT)
        (y,) = lease.load_model(str(model)).run(np.full(4, 3, dtype=np.int8))
        assert y.tolist() == [3] * 4
        # the session's executor and the warm spare
        pids = until("two executors (session and spare)",
                     lambda: (lambda p: p if len(p) >= 2 else None)(_executors(workdir)))
        (session_dir,) = workdir.glob("session-*")
        arena = Path((session_dir / "arena").read_text())
        assert arena.exists()

        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=WAIT)
        end = time.monotonic() + 2.0
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < end, (
                f"executors {[p for p in pids if _alive(p)]} outlived their server by 2 s")
            time.sleep(0.02)
        try:
            lease.release()
        except Exception:
            pass  # the board is gone; the tracker ended the lease already

        # an executor that escaped (it was still starting, say) is recorded as ours
        leftover = subprocess.Popen(["sleep", "600"])
        Workdir(workdir).record_executor(leftover.pid)
        assert session_dir.exists() and arena.exists()

        again, _ = start_server(address, fake_lib, workdir)
        leftover.wait(timeout=WAIT)
        assert leftover.returncode == -signal.SIGKILL
        assert not session_dir.exists()
        assert not arena.exists()
        log = daemon_log(again)
        assert f"killed the executor process {leftover.pid} left by an earlier run" in log
        assert f"removed the arena {arena} left by an earlier run" in log
        assert f"removed the stale session directory {session_dir.name}" in log
        until("the restarted board to be free", state_is(client, "free"))
        with client.request("demo", wait_for_board=True, wait=WAIT) as fresh:
            (y,) = fresh.load_model(str(model)).run(np.full(4, 4, dtype=np.int8))
            assert y.tolist() == [4] * 4
    finally:
        if leftover is not None and leftover.poll() is None:
            os.kill(leftover.pid, signal.SIGKILL)
            leftover.wait(timeout=10)
        if server.poll() is None:
            stop(server)
        print(daemon_log(server))
        if again is not None:
            finish(again, workdir)
