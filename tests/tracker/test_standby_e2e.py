"""A standby pair of real compass-trackers on one real PostgreSQL database: kill -9 of the
active one, and the standby takes over with nothing lost.

A real board (compass-server on the fake NPU driver) is given both trackers, the standby
first, so it follows the standby's redirect; a client holds a lease with a session, and a
second client waits. The active tracker is killed with SIGKILL: its connections drop,
PostgreSQL frees its advisory lock, the standby takes it and restores the store; the
board registers again with its session, the clients re-attach, and the waiting request
is granted when the lease is released. Every process is stopped by its PID; every wait
has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from compassd.client import TrackerUnreachable, connect_tracker
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, free_port, start_twistd, stop, until, wait_logged
from tests.postgres import postgres_server
from tests.test_cli import compass

WAIT = 60.0
FAILOVER = 10.0
"""The issue's requirement: the standby is active and every board registered again
within this many seconds of the kill."""




@pytest.mark.slow
def test_kill_9_of_the_active_tracker_hands_everything_to_the_standby(tmp_path: Path):
    server = postgres_server()
    processes = []
    clients = []
    try:
        url = server.create_database("standby")
        port_a, port_b = free_port(), free_port()
        a, b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"

        def tracker(port: int):
            process, _ = start_twistd(
                "compass-tracker", "--store", url,
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--advertise", f"127.0.0.1:{port}", "--claim-timeout", "0")
            processes.append(process)
            return process

        active = tracker(port_a)
        wait_logged(active, "is the active one")
        standby = tracker(port_b)
        wait_logged(standby, "is its standby")

        model = tmp_path / "add3.bin"
        write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                    value=3)
        board, _ = start_twistd(
            "compass-server", "--key", "demo", "--tracker", f"{b},{a}",
            "--backend", "aipu", "--driver", str(build_fake_driver()),
            "--workdir", str(tmp_path / "work"), "--device", "board-1")
        processes.append(board)

        # Given only the standby, a client follows its redirect to the active tracker.
        holder = connect_tracker(b, user="carol")
        clients.append(holder)
        assert holder.address == a and holder.redirected
        assert holder.tracker_states() == [
            {"address": a, "state": "active"},
            {"address": b, "state": "standby", "active": a}]
        until("the board registered",
              lambda: any(d["state"] == "free" for d in holder.devices()))
        shown = compass("status", env={"COMPASS_TRACKER": f"{b},{a}", "COMPASS_USER": "ann"})
        assert shown.exit_code == 0, shown.output
        assert f"Trackers: {a} active; {b} standby (redirects to {a})" in shown.output
        assert "board-1" in shown.output
        lease = holder.request("demo", wait=WAIT, lease=600)
        notices: list[str] = []
        holder._tracker.on_notice = notices.append
        loaded = lease.load_model(str(model))
        x = np.arange(16, dtype=np.int8)
        assert loaded.run(x)[0].tolist() == (x + 3).tolist()
        deadline_before = lease.remaining

        queued: list[str] = []
        waiter_notices: list[str] = []
        granted: list[str] = []
        failures: list[BaseException] = []

        def wait_for_board() -> None:
            try:
                client = connect_tracker([a, b], user="bob")
                clients.append(client)
                with client.request("demo", wait=WAIT,
                                    on_queued=lambda r, p, n: queued.append(r),
                                    on_notice=waiter_notices.append) as won:
                    granted.append(won.id)
            except BaseException as e:  # reported by the test below
                failures.append(e)

        waiter = threading.Thread(target=wait_for_board, daemon=True)
        waiter.start()
        until("bob queued", lambda: queued)
        # What the active tracker answered is written to the store in a batch of its
        # own: kill it once the request is there (a kill before that write is the
        # store's concern, not the standby's).
        until("bob's request and carol's lease in the store",
              lambda: _stored(url, "compass_requests", queued[0])
              and _stored(url, "compass_leases", lease.id))

        os.kill(active.pid, signal.SIGKILL)
        killed = time.monotonic()
        active.wait(10)

        observer = connect_tracker([a, b], user="observer", timeout=FAILOVER)
        clients.append(observer)

        def board_back() -> dict | None:
            try:
                rows = {d["name"]: d for d in observer.devices()}
            except TrackerUnreachable:
                return None
            row = rows.get("board-1")
            return row if row and row["state"] == "busy" else None

        row = until("the standby active and the board registered again", board_back,
                    deadline=FAILOVER + 5)
        took = time.monotonic() - killed
        print(f"failover: the standby was active with the board registered again"
              f" {took:.2f} s after kill -9 of the active tracker")
        assert took < FAILOVER, f"failover took {took:.1f} s"
        assert observer.address == b
        assert row["holder"] == "carol"
        shown = compass("status", "--json",
                        env={"COMPASS_TRACKER": f"{a},{b}", "COMPASS_USER": "ann"})
        assert shown.exit_code == 0, shown.output
        states = json.loads(shown.stdout)["trackers"]
        assert [(t["address"], t["state"]) for t in states] == [
            (b, "active"), (a, "unreachable")]
        assert "took the active lock after" in daemon_log(standby)

        until(f"both clients re-attached (holder: {notices}, waiting: {waiter_notices})",
              lambda: notices and waiter_notices, deadline=WAIT)
        assert notices == [f"tracker restarted; lease {lease.id} goes on"]
        assert waiter_notices == ["tracker restarted; still waiting at position 0"]
        # The lease went on: the session on the board still runs the model.
        assert loaded.run(x)[0].tolist() == (x + 3).tolist()
        assert abs(lease.remaining - deadline_before) < 30
        assert granted == []
        lease.release()
        waiter.join(WAIT)
        assert not failures, failures
        assert len(granted) == 1
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        for process in reversed(processes):
            if process.poll() is None:
                stop(process)
            print(daemon_log(process))
        try:
            rows = _history(url) if "url" in locals() else []
        finally:
            server.remove()
    outcomes = sorted((user, outcome) for user, outcome, was_granted in rows
                      if was_granted)
    assert outcomes in ([("bob", "released"), ("carol", "released")],
                        [("bob", "released"), ("carol", "session-ended")])


def _stored(url: str, table: str, ident: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT 1 FROM {table} WHERE id = %s",
                            (ident,)).fetchone() is not None


def _history(url: str) -> list[tuple[str, str, bool]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT user_name, outcome, granted_at IS NOT NULL FROM compass_history")]
