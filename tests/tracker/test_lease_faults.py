"""A lease is true on both ends, under the faults of issue 12, with real daemons.

A real tracker with a short heartbeat timeout, a real compass-server (fake NPU driver),
real clients. A board process is stopped (SIGSTOP) past the heartbeat timeout while its
holder runs and others wait; a tracker is killed (SIGKILL) and started again on its port.
In every case: no grant fails with BoardBusy, the tracker never shows the device free
while a session is open on it, and the next waiter gets a working board.

Every process is stopped by its PID; every wait polls with a deadline; a watcher thread
samples the tracker's view of the device all along.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compassd.client import BoardUnreachable, connect_tracker
from compassd.protocol.errors import SessionEnded
from compassd.tracker.reconcile import lease_epoch
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, free_port, start_twistd, stop
from tests.server.test_board import finish, start_server, until

pytestmark = pytest.mark.slow

WAIT = 60.0
HEARTBEAT = ("--heartbeat-timeout", "1.5")


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "add.bin"
    write_graph(path, [Tensor(4, "int8")], [Tensor(4, "int8")], behaviour="add", value=1)
    return path


class Watch:
    """Samples the device's row at the tracker (state, lease) until stopped."""

    def __init__(self, address: tuple[str, int], device: str = "life-1") -> None:
        self.rows: list[tuple[float, str, str | None]] = []
        self._stop = threading.Event()
        self._address = address
        self._device = device
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = connect_tracker(*self._address, user="watcher", timeout=2)
                rows = {d["name"]: d for d in client.summary()["devices"]}
                row = rows.get(self._device)
                if row is not None:
                    self.rows.append((time.monotonic(), row["state"], row["lease"]))
            except Exception:
                client = None  # the tracker is away; try again
            self._stop.wait(0.05)

    def states_between(self, start: float, end: float) -> set[str]:
        return {state for when, state, _ in self.rows if start <= when <= end}

    def latest(self) -> tuple[str, str | None] | None:
        return self.rows[-1][1:] if self.rows else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Waiter:
    """Another user's request, waiting on its own thread; then a run on the board."""

    def __init__(self, address: tuple[str, int], user: str, model: Path) -> None:
        self.user = user
        self.outcome: tuple[str, Any] | None = None
        self.lease_id: str | None = None
        self._thread = threading.Thread(target=self._run, args=(address, model),
                                        name=f"waiter {user}", daemon=True)
        self._thread.start()

    def _run(self, address: tuple[str, int], model: Path) -> None:
        try:
            client = connect_tracker(*address, user=self.user)
            with client.request("demo", wait=WAIT, lease=30, wait_for_board=True) as lease:
                self.lease_id = lease.id
                (y,) = lease.load_model(str(model)).run(np.full(4, 2, dtype=np.int8))
                self.outcome = ("ok", y.tolist())
        except Exception as e:  # recorded, asserted by the test
            self.outcome = ("error", f"{type(e).__name__}: {e}")

    def join(self, deadline: float = WAIT) -> tuple[str, Any]:
        self._thread.join(deadline)
        assert self.outcome is not None, f"{self.user}'s request did not finish"
        return self.outcome


def waiting(client: Any) -> int:
    """Requests waiting at the tracker, all keys."""
    return sum(queue["count"] for queue in client.summary()["queues"])


@pytest.fixture
def tracker_args() -> tuple[str, ...]:
    return HEARTBEAT


@pytest.fixture
def board(tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
          ) -> Iterator[subprocess.Popen[bytes]]:
    workdir = tmp_path / "work"
    proc, _ = start_server(f"{tracker[0]}:{tracker[1]}", fake_lib, workdir)
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        finish(proc, workdir)


def _stopped_past_heartbeat(board: subprocess.Popen[bytes], watch: Watch) -> None:
    os.kill(board.pid, signal.SIGSTOP)
    until("the tracker to take the stalled board offline",
          lambda: watch.latest() is not None and watch.latest()[0] == "offline")  # type: ignore[index]


def test_a_stalled_board_that_comes_back_goes_on_with_its_lease(
    tracker: tuple[str, int], board: subprocess.Popen[bytes], model: Path
) -> None:
    watch = Watch(tracker)
    alice = connect_tracker(*tracker, user="alice")
    lease = alice.request("demo", wait=WAIT, lease=60, wait_for_board=True)
    loaded = lease.load_model(str(model))
    assert loaded.run(np.zeros(4, dtype=np.int8))[0].tolist() == [1] * 4
    opened = time.monotonic()
    waiters = [Waiter(tracker, user, model) for user in ("bob", "carol")]
    until("both waiters to queue", lambda: waiting(alice) == 2)
    _stopped_past_heartbeat(board, watch)
    row = {d["name"]: d for d in alice.summary()["devices"]}["life-1"]
    assert row["lease"] == lease.id and row["holder"] == "alice", row
    assert all(w.outcome is None for w in waiters), "a waiter was served by an offline board"
    os.kill(board.pid, signal.SIGCONT)
    until("the board to be back, busy with alice's lease",
          lambda: watch.latest() == ("busy", lease.id))
    assert loaded.run(np.full(4, 5, dtype=np.int8))[0].tolist() == [6] * 4
    lease.release()
    closed = time.monotonic()
    for waiter in waiters:
        assert waiter.join() == ("ok", [3] * 4), waiter.outcome
    watch.stop()
    assert "free" not in watch.states_between(opened, closed), watch.rows
    assert "BoardBusy" not in daemon_log(board)


def test_a_stalled_board_past_the_deadline_ends_the_lease_with_a_reason(
    tracker: tuple[str, int], board: subprocess.Popen[bytes], model: Path
) -> None:
    watch = Watch(tracker)
    alice = connect_tracker(*tracker, user="alice")
    lease = alice.request("demo", wait=WAIT, lease=4, wait_for_board=True)
    loaded = lease.load_model(str(model))
    loaded.run(np.zeros(4, dtype=np.int8))
    opened = time.monotonic()
    bob = Waiter(tracker, "bob", model)
    until("bob to queue", lambda: waiting(alice) == 1)
    _stopped_past_heartbeat(board, watch)
    until("the tracker to end the suspended lease at its deadline",
          lambda: not lease.active)
    said = str(lease.end_reason)
    assert lease.id in said and "stopped answering" in said, said
    with pytest.raises(SessionEnded) as caught:  # the client closed its session too
        loaded.run(np.zeros(4, dtype=np.int8))
    assert lease.id in str(caught.value), str(caught.value)
    assert "free" not in watch.states_between(opened, time.monotonic()), watch.rows
    os.kill(board.pid, signal.SIGCONT)
    assert bob.join() == ("ok", [3] * 4), bob.outcome
    watch.stop()


def test_a_restarted_tracker_adopts_the_running_session_and_ids_do_not_repeat(
    fake_lib: Path, tmp_path: Path, model: Path
) -> None:
    port = free_port()
    listen = ("--listen", f"tcp:{port}:interface=127.0.0.1", *HEARTBEAT)
    address = ("127.0.0.1", port)
    first, _ = start_twistd("compass-tracker", *listen)
    second = None
    workdir = tmp_path / "work"
    server, _ = start_server(f"127.0.0.1:{port}", fake_lib, workdir)
    watch = None
    try:
        alice = connect_tracker(*address, user="alice")
        until("the board to register", lambda: any(
            d["state"] == "free" for d in alice.summary()["devices"]))
        lease = alice.request("demo", wait=WAIT, lease=60, wait_for_board=True)
        loaded = lease.load_model(str(model))
        loaded.run(np.zeros(4, dtype=np.int8))
        watch = Watch(address)
        opened = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(WAIT)
        second, _ = start_twistd("compass-tracker", *listen)
        until("the new tracker to adopt alice's session",
              lambda: watch.latest() == ("busy", lease.id))  # type: ignore[union-attr]
        bob = Waiter(address, "bob", model)
        # alice's session runs on, on the board, although her tracker went away
        assert loaded.run(np.full(4, 7, dtype=np.int8))[0].tolist() == [8] * 4
        lease.close_session()
        closed = time.monotonic()
        assert bob.join() == ("ok", [3] * 4), bob.outcome
        assert bob.lease_id is not None and bob.lease_id != lease.id
        assert lease_epoch(bob.lease_id) != lease_epoch(lease.id)
        assert "free" not in watch.states_between(opened, closed), watch.rows
    finally:
        if watch is not None:
            watch.stop()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc)
        finish(server, workdir)


def test_a_run_on_a_stopped_board_raises_at_the_lease_deadline(
    fake_lib: Path, tmp_path: Path, model: Path
) -> None:
    # the tracker is stopped too: only the client's own deadline can end the wait
    tracker, port = start_twistd("compass-tracker", "--heartbeat-timeout", "60")
    workdir = tmp_path / "work"
    server, _ = start_server(f"127.0.0.1:{port}", fake_lib, workdir)
    try:
        alice = connect_tracker("127.0.0.1", port, user="alice")
        lease = alice.request("demo", wait=WAIT, lease=3, wait_for_board=True)
        loaded = lease.load_model(str(model))
        loaded.run(np.zeros(4, dtype=np.int8))
        os.kill(tracker.pid, signal.SIGSTOP)
        os.kill(server.pid, signal.SIGSTOP)
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                loaded.run(np.zeros(4, dtype=np.int8))
                outcome.append(None)
            except BaseException as e:  # recorded, asserted below
                outcome.append(e)

        runner = threading.Thread(target=run, name="run on a stopped board", daemon=True)
        runner.start()
        runner.join(WAIT)
        assert outcome, "run() on a stopped board did not return"
        (error,) = outcome
        assert isinstance(error, SessionEnded), error
        said = str(error)
        assert lease.id in said and "deadline" in said, said
    finally:
        for proc in (tracker, server):
            os.kill(proc.pid, signal.SIGCONT)
        stop(tracker)
        finish(server, workdir)


def test_opening_a_session_on_a_stopped_board_is_a_sentence_not_a_hang(
    tracker: tuple[str, int], board: subprocess.Popen[bytes], model: Path
) -> None:
    alice = connect_tracker(*tracker, user="alice")
    lease = alice.request("demo", wait=WAIT, lease=60, wait_for_board=True)
    # the board's kernel still takes the connection; only the hello can tell
    os.kill(board.pid, signal.SIGSTOP)
    outcome: list[BaseException | None] = []

    def open_it() -> None:
        try:
            lease.open_session(timeout=2)
            outcome.append(None)
        except BaseException as e:  # recorded, asserted below
            outcome.append(e)

    opener = threading.Thread(target=open_it, name="open on a stopped board", daemon=True)
    opener.start()
    opener.join(WAIT)
    assert outcome, "open_session on a stopped board did not return"
    (error,) = outcome
    assert isinstance(error, BoardUnreachable), error
    said = str(error)
    assert lease.address in said and "did not answer within 2 s" in said, said
    def state() -> str:
        return {d["name"]: d for d in alice.summary()["devices"]}["life-1"]["state"]

    until("the tracker to take the stopped board offline", lambda: state() == "offline")
    os.kill(board.pid, signal.SIGCONT)
    until("the board to be back, busy with the lease", lambda: state() == "busy")
    # the ticket was never presented: the board serves the lease once it is back
    (y,) = lease.load_model(str(model)).run(np.full(4, 4, dtype=np.int8))
    assert y.tolist() == [5] * 4
    lease.release()
