"""A board whose /dev/shm is small: a run that does not fit is refused with a sentence
(never a SIGBUS), the board stays up and serves the next run, and a board below its
free-space threshold says so in the tracker's summary.

Each compass-server runs in a mount namespace the test makes (``unshare -m``, as root)
with its own small tmpfs on /dev/shm; without root or unshare the tests are skipped.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_tracker
from compassd.protocol.errors import LimitExceeded
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import ROOT, DaemonFailed, _drain, daemon_env, daemon_log, stop
from tests.server.test_board import device_row, until

pytestmark = pytest.mark.slow

WAIT = 30.0
SHM = "8m"


def _unshare_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a mount namespace"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)
    return build_fake_driver()


def _start_with_small_shm(*args: str) -> subprocess.Popen[bytes]:
    """``twistd -n compass-server ARGS`` with its own SHM-sized /dev/shm (``unshare``
    and ``sh`` exec it, so the PID is the daemon's), once it listens."""
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs -o size={SHM},mode=1777 tmpfs /dev/shm && exec "$@"', "sh",
               sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
               "--pidfile=", "--logfile=-", "compass-server",
               "--listen", "tcp:0:interface=127.0.0.1", *args]
    proc = subprocess.Popen(command, env=daemon_env(), cwd=str(ROOT),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    log = b""
    end = time.monotonic() + WAIT
    try:
        while not re.search(rb"listening on tcp 127\.0\.0\.1:\d+", log):
            left = end - time.monotonic()
            if left <= 0 or proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
                raise DaemonFailed(f"compass-server did not start:\n{log.decode()}")
            if select.select([fd], [], [], left)[0]:
                log += os.read(fd, 65536)
        os.set_blocking(fd, True)
        _drain(proc, log)
        return proc
    except BaseException:
        stop(proc)
        raise


@pytest.fixture
def small_board(tracker: tuple[str, int], fake_lib: Path, tmp_path: Path,
                request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    extra = getattr(request, "param", ())
    proc = _start_with_small_shm(
        "--key", "demo", "--tracker", f"{tracker[0]}:{tracker[1]}", "--backend", "aipu",
        "--driver", str(fake_lib), "--workdir", str(tmp_path / "work"), "--device",
        "shm-1", "--health-interval", "0.5", *extra)
    try:
        yield proc
    finally:
        status = stop(proc)
        print(daemon_log(proc))
        assert status in (0, -15), f"compass-server ended with {status}"
        assert "Traceback" not in daemon_log(proc)


@pytest.mark.parametrize("small_board", [("--min-free-shm", "1M")], indirect=True)
def test_an_oversized_run_is_a_sentence_and_the_board_stays_up(
    tracker: tuple[str, int], small_board: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    client = connect_tracker(*tracker)
    until("the board to be free", lambda: (device_row(client, "shm-1") or {}).get(
        "state") == "free")
    big_out = tmp_path / "big-out.bin"  # 16 bytes in, 16 MiB out
    write_graph(big_out, [Tensor(16, "int8")], [Tensor(16 << 20, "int8")])
    big_in = tmp_path / "big-in.bin"  # 16 MiB in, 16 bytes out
    write_graph(big_in, [Tensor(16 << 20, "int8")], [Tensor(16, "int8")])
    small = tmp_path / "small.bin"
    write_graph(small, [Tensor(16, "int8")], [Tensor(16, "int8")])
    with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
        with pytest.raises(LimitExceeded) as caught:
            lease.load_model(str(big_out)).run(np.ones(16, dtype=np.int8))
        said = str(caught.value)
        assert re.search(r"shared memory \(/dev/shm\) has [\d.]+ MiB free; this run needs"
                         r" 16 MiB", said), said
        # inputs that do not fit are refused before a byte of them is taken
        with pytest.raises(LimitExceeded) as caught:
            lease.load_model(str(big_in)).run(np.ones(16 << 20, dtype=np.int8))
        said = str(caught.value)
        assert re.search(r"shared memory \(/dev/shm\) has [\d.]+ MiB free; this run needs"
                         r" 16 MiB", said), said
        # the same session goes on
        (y,) = lease.load_model(str(small)).run(np.full(16, 7, dtype=np.int8))
        assert y.tolist() == [7] * 16
    assert small_board.poll() is None, "the board server died"
    with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
        (y,) = lease.load_model(str(small)).run(np.full(16, 8, dtype=np.int8))
        assert y.tolist() == [8] * 16


@pytest.mark.parametrize("small_board", [("--min-free-shm", "64M")], indirect=True)
def test_a_board_short_of_shared_memory_says_so_in_status(
    tracker: tuple[str, int], small_board: subprocess.Popen[bytes]
) -> None:
    client = connect_tracker(*tracker)
    row = until("the board to report itself short of shared memory",
                lambda: (lambda r: r if r and "shared memory" in r["health"] else None)(
                    device_row(client, "shm-1")))
    assert re.search(r"shared memory /dev/shm has \d+ MiB free, below the 64 MiB",
                     row["health"]), row
    assert row["state"] == "quarantined", row
