"""Run inside the booted test container: ask the tracker, check or use the board.

    client.py devices          print the devices the tracker knows, one JSON line each
    client.py wait-online DEV  wait (bounded) until DEV is registered and online
    client.py run              request pool "demo", load a fake-driver model, run it
    client.py hold             keep a session open (running a model) until it ends
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
    return 0 if "board-demo" in page and 'id="board-rows"' in page else 1


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
    if what == "metrics":
        sys.exit(metrics(sys.argv[2]))
    if what == "dashboard":
        sys.exit(dashboard(sys.argv[2]))
    sys.exit(f"unknown command {what!r}")
