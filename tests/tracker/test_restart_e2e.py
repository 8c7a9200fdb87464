"""kill -9 of a real compass-tracker with a store (a SQLite file, or a database on a real
PostgreSQL server the test starts: tests/postgres.py), and its restart: a real board
(compass-server on the fake NPU driver) keeps its session, the clients (the blocking
client, from threads) re-attach, and nothing is lost.

Every process is stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from compassd.client import TrackerUnreachable, connect_tracker
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, start_twistd, stop, until
from tests.postgres import postgres_server

HISTORY = ("SELECT id, user_name, outcome, granted_at IS NOT NULL FROM compass_history"
           " ORDER BY ended_at")

WAIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """The tracker's --store, and a function reading its history rows (HISTORY)."""
    if request.param == "sqlite":
        path = tmp_path / "state" / "tracker.sqlite"

        def sqlite_history() -> list[tuple]:
            with sqlite3.connect(str(path)) as db:
                return db.execute(HISTORY).fetchall()

        yield str(path), sqlite_history
        return
    server = postgres_server()  # skips only where PostgreSQL or psycopg is absent
    try:
        url = server.create_database("restart")
        import psycopg

        def postgresql_history() -> list[tuple]:
            with psycopg.connect(url) as db:
                return db.execute(HISTORY).fetchall()

        yield url, postgresql_history
    finally:
        server.remove()


@pytest.mark.slow
def test_kill_9_of_the_tracker_loses_no_lease_no_request_and_no_history(tmp_path: Path,
                                                                       store):
    store, read_history = store
    port = free_port()
    args = ("--store", store, "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--claim-timeout", "0")
    tracker, _ = start_twistd("compass-tracker", *args)
    trackers = [tracker]
    model = tmp_path / "add3.bin"
    write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                value=3)
    board, _ = start_twistd(
        "compass-server", "--key", "demo", "--tracker", f"127.0.0.1:{port}",
        "--backend", "aipu", "--driver", str(build_fake_driver()),
        "--workdir", str(tmp_path / "work"), "--device", "board-1")
    clients = []
    try:
        holder = connect_tracker("127.0.0.1", port, user="carol")
        clients.append(holder)
        until("the board registered",
              lambda: any(d["state"] == "free" for d in holder.devices()))
        lease = holder.request("demo", wait=WAIT, lease=600)
        loaded = lease.load_model(str(model))
        x = np.arange(16, dtype=np.int8)
        assert loaded.run(x)[0].tolist() == (x + 3).tolist()
        deadline_before = lease.remaining

        # Three waiting: bob (priority 1), alice (1), bob (5), in that order.
        granted: list[str] = []
        notices: list[str] = []
        queued: dict[str, str] = {}
        lock = threading.Lock()
        failures: list[BaseException] = []

        def wait_for_board(name: str, user: str, priority: int) -> None:
            try:
                client = connect_tracker("127.0.0.1", port, user=user)
                clients.append(client)
                with client.request(
                        "demo", priority=priority, wait=WAIT,
                        on_queued=lambda r, p, n: queued.__setitem__(name, r),
                        on_notice=lambda line: notices.append(f"{name}: {line}")):
                    with lock:
                        granted.append(name)
            except BaseException as e:  # reported by the test below
                failures.append(e)

        threads = []
        for name, user, priority in [("w1", "bob", 1), ("w2", "alice", 1), ("w3", "bob", 5)]:
            t = threading.Thread(target=wait_for_board, args=(name, user, priority),
                                 daemon=True)
            t.start()
            threads.append(t)
            until(f"{name} queued", lambda name=name: name in queued)

        os.kill(tracker.pid, signal.SIGKILL)
        tracker.wait(10)
        tracker, _ = start_twistd("compass-tracker", *args)
        trackers.append(tracker)

        # The board comes back serving the same lease; the waiters re-attach.
        def leased_device() -> dict | None:
            try:  # the tracker's second --listen port may open a moment after the first
                rows = {d["name"]: d for d in holder.devices()}
            except TrackerUnreachable:
                return None
            row = rows.get("board-1")
            return row if row and row["state"] == "busy" else None

        row = until("the board registered again, busy", leased_device)
        assert row.get("lease") in (None, lease.id)
        until("three waiters re-attached", lambda: len(notices) >= 3)
        assert sorted(n.split(":")[0] for n in notices) == ["w1", "w2", "w3"]
        assert all("tracker restarted; still waiting at position" in n for n in notices)
        # The lease went on: the session on the board still runs the model.
        assert loaded.run(x)[0].tolist() == (x + 3).tolist()
        assert abs(lease.remaining - deadline_before) < 30
        assert granted == []
        lease.release()

        for t in threads:
            t.join(WAIT)
        assert not failures, failures
        # Priority first; then, at one priority, alice (never granted) before bob.
        assert granted == ["w3", "w2", "w1"]
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        status = stop(board)
        print(daemon_log(board))
        for t in trackers:
            stop(t)
            print(daemon_log(t))
    assert status in (0, -15)

    history = read_history()
    leases = [(user, outcome) for _, user, outcome, was_granted in history if was_granted]
    # The holder's release closed its session first: the board said so before the release.
    assert leases[0] in (("carol", "session-ended"), ("carol", "released"))
    assert sorted(leases[1:]) == [("alice", "released"), ("bob", "released"),
                                  ("bob", "released")]
    assert all(i.startswith("lease-2.") for i, *_ in history[1:])  # made after the restart
    assert history[0][0].startswith("lease-1.")
