"""Real Apache TVM against a real compass-tracker: rpc_server, connect_tracker, the query tool.

These run only when ``COMPASS_TVM_PYTHON`` names a python with ``apache-tvm`` installed,
for example::

    python3 -m venv /tmp/tvmvenv
    /tmp/tvmvenv/bin/pip install apache-tvm cloudpickle psutil
    COMPASS_TVM_PYTHON=/tmp/tvmvenv/bin/python python -m pytest tests/tracker/test_tvm_e2e.py

Every process is started in its own session and stopped by its process group id (TVM's
rpc_server runs its server in a child process); every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from compassd.protocol.tvm_tracker import TRACKER_MAGIC, FrameDecoder, encode

TVM_PYTHON = os.environ.get("COMPASS_TVM_PYTHON", "")
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not TVM_PYTHON,
    reason="set COMPASS_TVM_PYTHON to a python with apache-tvm installed (python3 -m venv"
    " /tmp/tvmvenv && /tmp/tvmvenv/bin/pip install apache-tvm cloudpickle psutil) to run"
    " compass-tracker against real TVM",
)


def wait_for(what: str, check: Callable[[], T | None], timeout: float,
             alive: Callable[[], str | None] = lambda: None) -> T:
    """Poll C{check} every 50 ms until it returns something, or fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        dead = alive()
        if dead:
            raise AssertionError(f"while waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


class Proc:
    """A child process in its own session, its output in a file, stopped by its group id."""

    def __init__(self, name: str, argv: list[str], tmp: Path) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        self._out = self.log.open("wb")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            cwd=tmp, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": str(ROOT) if name == "tracker" else ""},
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def died(self) -> str | None:
        if self.popen.poll() is None:
            return None
        return f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        else:
            # The leader is gone; make sure no child of its group lingers.
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._out.close()


@pytest.fixture(scope="module")
def tvm_python() -> str:
    try:
        check = subprocess.run([TVM_PYTHON, "-c", "import tvm.rpc; print(tvm.__version__)"],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"COMPASS_TVM_PYTHON={TVM_PYTHON} cannot import tvm.rpc: {e}")
    if check.returncode != 0:
        pytest.skip(f"COMPASS_TVM_PYTHON={TVM_PYTHON} cannot import tvm.rpc:"
                    f" {check.stderr.strip()[-500:]}")
    return TVM_PYTHON


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[[str, list[str]], Proc]]:
    started: list[Proc] = []

    def start(name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def start_tracker(start: Callable[[str, list[str]], Proc], *extra: str) -> tuple[Proc, int]:
    tracker = start("tracker", [
        sys.executable, "-m", "twisted", "--log-format", "text", "compass-tracker", "--tvm",
        "--listen", "tcp:0:interface=127.0.0.1", *extra,
    ])

    def port() -> int | None:
        found = re.search(r"compass-tracker listening on tcp 127\.0\.0\.1:(\d+)",
                          tracker.output())
        return int(found.group(1)) if found else None

    return tracker, wait_for("compass-tracker to listen", port, 30, tracker.died)


def free_port_range(width: int = 10) -> int:
    """A port P such that P..P+width were free a moment ago (rpc_server takes the first)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + width < 65536:
            return base
    raise AssertionError("no free port range found")


def tracker_call(port: int, payload: Any, timeout: float = 10) -> Any:
    """One request on a fresh TVM tracker connection, as TVM's tools do."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(TRACKER_MAGIC)
        got = b""
        while len(got) < 4:
            chunk = s.recv(4 - len(got))
            assert chunk, "the tracker closed the connection during the handshake"
            got += chunk
        assert got == TRACKER_MAGIC
        s.sendall(encode(payload))
        decoder = FrameDecoder()
        while True:
            chunk = s.recv(65536)
            assert chunk, "the tracker closed the connection before replying"
            frames = decoder.feed(chunk)
            if frames:
                return json.loads(frames[0])


def summary(port: int) -> dict[str, Any]:
    reply = tracker_call(port, [6])
    assert reply[0] == 0
    return reply[1]


def start_server(start: Callable[[str, list[str]], Proc], python: str, tracker_port: int,
                 key: str, name: str = "rpc_server") -> Proc:
    base = free_port_range()
    return start(name, [
        python, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tracker_port}",
        "--key", key, "--host", "127.0.0.1", "--port", str(base), "--port-end",
        str(base + 10),
    ])


def free_servers(port: int, key: str, count: int, proc: Proc | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        now = summary(port)
        queue = now["queue_info"].get(key, {"free": 0})
        return now if queue["free"] == count else None

    return wait_for(f"{count} free TVM server(s) of {key}", check, 60,
                    proc.died if proc else lambda: None)


CLIENT = r"""
import json, sys
import tvm.rpc
port, key = int(sys.argv[1]), sys.argv[2]
tracker = tvm.rpc.connect_tracker("127.0.0.1", port)
remote = tracker.request(key, priority=1, session_timeout=60)
remote.upload(bytearray(b"compassd"), "dat.bin")
echoed = bytes(remote.download("dat.bin"))
during = tracker.summary()
print(json.dumps({"echoed": echoed.decode(), "during": during}))
print("TEXT_SUMMARY")
print(tracker.text_summary())
"""


def test_tvm_rpc_server_and_client_work_through_compass_tracker(
    tvm_python: str, procs: Callable[[str, list[str]], Proc], tmp_path: Path
) -> None:
    tracker, port = start_tracker(procs)
    server = start_server(procs, tvm_python, port, "k")
    before = free_servers(port, "k", 1, server)
    (server_entry,) = before["server_info"]
    assert server_entry["key"] == "server:k"
    assert server_entry["addr"][0] == "127.0.0.1"

    client = subprocess.run([tvm_python, "-c", CLIENT, str(port), "k"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert client.returncode == 0, client.stderr[-3000:]
    result_line, text = client.stdout.split("TEXT_SUMMARY\n", 1)
    result = json.loads(result_line.strip().splitlines()[-1])
    assert result["echoed"] == "compassd"
    assert result["during"]["queue_info"]["k"] == {"free": 0, "pending": 0}
    assert "server:k" in text and "Queue Status" in text

    # After the session the server offers itself again.
    free_servers(port, "k", 1, server)
    query = subprocess.run(
        [tvm_python, "-m", "tvm.exec.query_rpc_tracker", "--host", "127.0.0.1", "--port",
         str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert query.returncode == 0, query.stderr[-3000:]
    lines = query.stdout.splitlines()
    assert f"Tracker address 127.0.0.1:{port}" in lines
    assert any(re.fullmatch(rf"127\.0\.0\.1:{server_entry['addr'][1]}\s+server:k", line)
               for line in lines), query.stdout
    assert any(re.fullmatch(r"k\s+1\s+1\s+0\s*", line) for line in lines), query.stdout
    assert tracker.died() is None


def test_a_killed_tvm_server_disappears_from_the_pool(
    tvm_python: str, procs: Callable[[str, list[str]], Proc]
) -> None:
    tracker, port = start_tracker(procs)
    server = start_server(procs, tvm_python, port, "gone")
    free_servers(port, "gone", 1, server)
    server.stop(signal.SIGKILL)

    def gone() -> bool | None:
        now = summary(port)
        return True if "gone" not in now["queue_info"] and not now["server_info"] else None

    wait_for("the killed server to leave the summary", gone, 30, tracker.died)
    # A raw request now waits (nothing answers it) instead of getting a dead server.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(TRACKER_MAGIC + encode([4, "gone", "", 1]))
        s.settimeout(1.0)
        assert s.recv(4) == TRACKER_MAGIC
        with pytest.raises(socket.timeout):
            s.recv(4)


PRIORITY_CLIENT = r"""
import sys, time
import tvm.rpc
port, key, priority = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tracker = tvm.rpc.connect_tracker("127.0.0.1", port)
print("asking", flush=True)
remote = tracker.request(key, priority=priority, session_timeout=60)
remote.upload(bytearray(b"x"), "x.bin")
print("granted", time.time(), flush=True)
"""


def test_waiting_tvm_clients_are_served_in_priority_order(
    tvm_python: str, procs: Callable[[str, list[str]], Proc]
) -> None:
    tracker, port = start_tracker(procs)
    # Hold the key with a raw grant so the real clients queue behind it.
    holder = socket.create_connection(("127.0.0.1", port), timeout=10)
    stopped = False
    try:
        server = start_server(procs, tvm_python, port, "prio")
        free_servers(port, "prio", 1, server)
        holder.sendall(TRACKER_MAGIC + encode([4, "prio", "", 100]))
        decoder, got = FrameDecoder(), b""
        while len(got) < 4 or not decoder.feed(got[4:]):
            chunk = holder.recv(65536)
            assert chunk
            got += chunk
        # The server would notice the unused grant after about 8 s and offer itself
        # again; starting three TVM clients can take longer than that on a loaded
        # machine, so the server is stopped (SIGSTOP) until all three are queued.
        # Arrival order does not matter, priority does.
        os.killpg(server.popen.pid, signal.SIGSTOP)
        stopped = True
        clients = {priority: procs(f"client-p{priority}", [
            tvm_python, "-c", PRIORITY_CLIENT, str(port), "prio", str(priority)])
            for priority in (0, 5, 1)}
        wait_for("the three clients to be waiting", lambda: summary(port)["queue_info"]
                 .get("prio", {}).get("pending") == len(clients) or None, 60,
                 lambda: next(filter(None, (c.died() for c in clients.values())), None))
    finally:
        if stopped:
            os.killpg(server.popen.pid, signal.SIGCONT)
        holder.close()
    # The server notices the unused grant (about 8 s) and offers itself again.

    def granted_at(priority: int) -> float | None:
        found = re.search(r"granted ([\d.]+)", clients[priority].output())
        return float(found.group(1)) if found else None

    times = {p: wait_for(f"client p{p} to be served", lambda p=p: granted_at(p), 90,
                         tracker.died) for p in clients}
    for proc in clients.values():
        proc.popen.wait(30)
        assert proc.popen.returncode == 0, proc.output()[-3000:]
    assert times[5] < times[1] < times[0]
