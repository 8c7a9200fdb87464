"""Run inside the booted test container: ask the tracker, check or use the board.

    client.py devices          print the devices the tracker knows, one JSON line each
    client.py wait-online DEV  wait (bounded) until DEV is registered and online
    client.py run              request pool "demo", load a fake-driver model, run it
    client.py hold             keep a session open (running a model) until it ends
    client.py across-restart F hold a lease with a session open until file F appears (the
                               probe restarts the tracker meanwhile), then check the
                               session goes on, the tracker lists the lease, and release it
    client.py metrics URL      the tracker's /metrics: board-demo is there, a grant counted
    client.py dashboard URL    the tracker's dashboard page (COMPASS_TOKEN's view) lists
                               board-demo

Every wait has a deadline; the exit status says whether the check passed. The token
is COMPASS_TOKEN's (the packages' tracker needs one); without it the client is anonymous.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from graphs import Tensor, write_graph

from compassd.client import connect_tracker

TRACKER = ("127.0.0.1", 9190)


def connect():  # type: ignore[no-untyped-def]
    return connect_tracker(*TRACKER, token=os.environ.get("COMPASS_TOKEN") or None,
                           timeout=10.0)


def devices() -> list[dict]:
    client = connect()
    try:
        return list(client.devices())
    finally:
        client.close()


def wait_online(name: str, deadline: float = 30.0) -> int:
    end = time.monotonic() + deadline
    seen: list[dict] = []
    while time.monotonic() < end:
        try:
            seen = devices()
        except Exception as e:  # the tracker may be restarting
            seen = [{"error": str(e)}]
        for device in seen:
            if device.get("name") == name and device.get("state") in ("free", "busy"):
                print(json.dumps(device, default=str))
                return 0
        time.sleep(0.2)
    print(f"{name} not online within {deadline:g} s; last answer: {seen}", file=sys.stderr)
    return 1


def run() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/add3.bin"
        write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                    value=3)
        client = connect()
        try:
            with client.request("demo", wait_for_board=True, wait=60.0) as session:
                loaded = session.load_model(model)
                x = np.arange(16, dtype=np.int8)
                (y,) = loaded.run(x)
                ok = y.tolist() == (x + 3).tolist()
                print(f"ran add3 on {session.address}: {y.tolist()}")
        finally:
            client.close()
    return 0 if ok else 1


def hold(seconds: float = 60.0) -> int:
    """Open a session on pool "demo", load a model, and keep it for C{seconds} (the
    probe stops the board meanwhile; the end of the session is the expected outcome)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/id.bin"
        write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")])
        client = connect()
        lease = client.request("demo", wait_for_board=True, wait=60.0)
        loaded = lease.load_model(model)
        loaded.run(np.zeros(4, dtype=np.int8))
        print("holding a session", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                loaded.run(np.zeros(4, dtype=np.int8))
            except Exception as e:
                print(f"the session ended: {e}", flush=True)
                return 0
            time.sleep(0.2)
    return 1


def across_restart(go: str, deadline: float = 120.0) -> int:
    """Hold a lease of pool "demo" with a model loaded; print C{holding LEASE}; once the
    file C{go} exists (the tracker was restarted), run the model again on the same
    session, wait until the restarted tracker lists board-demo busy with this lease,
    release it, and wait until board-demo is free."""
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/add3.bin"
        write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                    value=3)
        client = connect()
        try:
            lease = client.request("demo", wait_for_board=True, wait=60.0, lease=300.0)
            loaded = lease.load_model(model)
            x = np.arange(16, dtype=np.int8)
            if loaded.run(x)[0].tolist() != (x + 3).tolist():
                print("the model gave a wrong answer before the restart")
                return 1
            print(f"holding {lease.id}", flush=True)
            end = time.monotonic() + deadline
            while not os.path.exists(go):
                if time.monotonic() > end:
                    print(f"{go} did not appear within {deadline:g} s")
                    return 1
                time.sleep(0.2)
            if loaded.run(x)[0].tolist() != (x + 3).tolist():
                print("the model gave a wrong answer after the restart")
                return 1
            print("the session went on across the tracker's restart", flush=True)

            def state() -> tuple[str | None, str | None]:
                try:
                    rows = {d["name"]: d for d in client.devices()}
                except Exception as e:  # still reconnecting to the restarted tracker
                    return (f"unreachable: {e}", None)
                row = rows.get("board-demo") or {}
                return (row.get("state"), row.get("lease"))

            seen = state()
            end = time.monotonic() + 60.0
            while seen != ("busy", lease.id) and time.monotonic() < end:
                time.sleep(0.2)
                seen = state()
            if seen != ("busy", lease.id):
                print(f"the restarted tracker does not list board-demo busy with"
                      f" {lease.id}: {seen}")
                return 1
            print(f"the restarted tracker lists board-demo busy with {lease.id}", flush=True)
            # The holder's own connection re-attaches the lease (with backoff, as any
            # client that lost the tracker); the release goes through it.
            end = time.monotonic() + 30.0
            while not lease._lease.tracker.connected:
                if time.monotonic() > end:
                    print(f"the holder's connection did not come back for {lease.id}")
                    return 1
                time.sleep(0.2)
            lease.release()
            end = time.monotonic() + 30.0
            while state()[0] != "free":
                if time.monotonic() > end:
                    print(f"board-demo is not free after the release: {state()}")
                    return 1
                time.sleep(0.2)
            print(f"released {lease.id}; board-demo is free", flush=True)
            return 0
        finally:
            client.close()


def metrics(url: str) -> int:
    """Scrape the tracker's metrics: board-demo is free or busy, a grant of pool demo
    was counted, a board is connected."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    grants = samples.get(("compassd_tracker_grants_total", (("key", "demo"),)), 0.0)
    up = sum(samples.get(("compassd_tracker_device_state",
                          (("device", "board-demo"), ("key", "demo"), ("state", state))), 0.0)
             for state in ("free", "busy"))
    boards = samples.get(("compassd_tracker_connections", (("role", "board"),)), 0.0)
    print(f"grants of demo: {grants:g}; board-demo free or busy: {up:g}; boards: {boards:g}")
    return 0 if grants >= 1 and up == 1 and boards >= 1 else 1


def dashboard(url: str) -> int:
    import urllib.request

    request = urllib.request.Request(url)
    token = os.environ.get("COMPASS_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        page = answer.read().decode()
    named, rows = "board-demo" in page, 'id="board-rows"' in page
    if named and rows:
        return 0
    print(f"the dashboard page ({len(page)} characters) names board-demo: {named}, has"
          f" its board rows: {rows}; it ends: {page[-600:]}")
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        sys.exit(hold())
    what = sys.argv[1]
    if what == "devices":
        for device in devices():
            print(json.dumps(device, default=str))
        sys.exit(0)
    if what == "wait-online":
        sys.exit(wait_online(sys.argv[2]))
    if what == "run":
        sys.exit(run())
    if what == "across-restart":
        sys.exit(across_restart(sys.argv[2]))
    if what == "metrics":
        sys.exit(metrics(sys.argv[2]))
    if what == "dashboard":
        sys.exit(dashboard(sys.argv[2]))
    sys.exit(f"unknown command {what!r}")
