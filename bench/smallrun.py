"""Where a small run's time goes: timestamps at every hop of C{model.run}.

Run from the repository root::

    .venv/bin/python bench/smallrun.py             # 2,000 runs
    .venv/bin/python bench/smallrun.py --quick     # 200 runs, a smoke run

A real tracker and a real compass-server (the aipu backend on the fake driver that
``tests/fakedriver`` builds) run as subprocesses on 127.0.0.1, and the blocking client
in this process runs a 16-byte identity graph again and again, as the small-run row of
``bench/session.py`` does. Every process stamps each read and write of its TCP
connections and pipes (``bench/_stamps``, loaded only by this bench), and the client
stamps the caller's call and return and its reactor thread's start and answer. The
stamps are CLOCK_MONOTONIC, which all processes of a machine share, so one run's
stamps line up across the client, the board server and the executor.

For each segment between two consecutive stamps of a run the table gives the p50 and
p90 of its wall time over all runs, and, where both stamps are taken by one thread,
the p50 of that thread's CPU time in it (equal to the wall time: the segment is work;
less: the thread waited). A segment from one process's write to another's read is
the wire and the wake-up of the reader. The baseline is a raw Python socket ping-pong
over loopback, measured in the same run before the daemons start.

Stamps cost about a microsecond each (a memory write, no system call); a run takes 18.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "bench" / "_stamps"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "bench-smallrun"
PING = b"x" * 64

# (segment start, segment end, what it is): one run's stamps in order; the segments add
# up to the whole run. A write's end is left out: the reader may wake and run before the
# writer's send() returns, so the wire segment runs from the write's start to the read.
CHAIN = [
    ("client.call", "client.start", "client: caller thread -> reactor thread (check, hand-off)"),
    ("client.start", "c.tcp.write0", "client: encode the run box and the input bytes"),
    ("c.tcp.write0", "b.tcp.read0", "wire: client send() -> board reads (wake-up)"),
    ("b.tcp.read0", "b.pipe.write0", "board: decode the run, plan the arena, encode Execute"),
    ("b.pipe.write0", "e.pipe.read0", "wire: board write() -> executor reads (wake-up)"),
    ("e.pipe.read0", "e.pipe.write0", "executor: decode, run the backend, encode the answer"),
    ("e.pipe.write0", "b.pipe.read0", "wire: executor write() -> board reads (wake-up)"),
    ("b.pipe.read0", "b.tcp.write0", "board: decode the answer, encode run answer + outputs"),
    ("b.tcp.write0", "c.tcp.read0", "wire: board send() -> client reads (wake-up)"),
    ("c.tcp.read0", "client.fired", "client: decode the answer, fill the output arrays"),
    ("client.fired", "client.return", "client: reactor thread -> caller thread (wake-up)"),
]

EXECUTOR = "executor: decode, (not the backend), encode the answer"
BACKEND = "backend: the fake driver's run, by the executor's own timer"


def labels() -> list[str]:
    """The table's rows in order: the executor's segment is split in two."""
    rows: list[str] = []
    for start, _, what in CHAIN:
        rows += [EXECUTOR, BACKEND] if start == "e.pipe.read0" else [what]
    return rows

GROUPS = ("client", "board", "executor", "backend", "wire")


def _load_hook() -> Any:
    """bench/_stamps/sitecustomize.py, loaded once (loading it starts this process's
    stamp file when COMPASS_BENCH_STAMPS is set)."""
    module = sys.modules.get("compass_bench_stamps")
    if module is None:
        spec = importlib.util.spec_from_file_location("compass_bench_stamps",
                                                      HOOK / "sitecustomize.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["compass_bench_stamps"] = module
        spec.loader.exec_module(module)
    return module


# --- the baseline: a raw Python socket ping-pong ----------------------------------------


def _echo(port_out: Any) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port_out.put(listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn, listener:
        while True:
            data = conn.recv(len(PING))
            if not data:
                return
            conn.sendall(data)


def ping_pong(runs: int) -> float:
    """The p50 seconds of a 64-byte round trip between two processes over loopback."""
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    child = ctx.Process(target=_echo, args=(ports,), daemon=True)
    child.start()
    try:
        sock = socket.create_connection(("127.0.0.1", ports.get(timeout=30)), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        with sock:
            for _ in range(runs + 50):
                t0 = time.perf_counter()
                sock.sendall(PING)
                got = 0
                while got < len(PING):
                    chunk = sock.recv(len(PING) - got)
                    if not chunk:
                        raise ConnectionError("the echo process closed early")
                    got += len(chunk)
                times.append(time.perf_counter() - t0)
        return statistics.median(times[50:])
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)


# --- the runs --------------------------------------------------------------------------


def _stamp_client(hook: Any, model: Any) -> Callable[[], None]:
    """Stamp the caller's call and return of C{model.run} and its reactor thread's
    start and answer; returns the function that undoes it."""
    stamps = hook.stamps
    events = hook.EVENTS
    call, start, fired, done = (events.index(name) for name in (
        "client.call", "client.start", "client.fired", "client.return"))
    blocking, asynchronous = type(model), type(model._model)
    run, arun = blocking.run, asynchronous._run

    def stamped_run(self: Any, inputs: Any, *, timeout: float | None = None) -> Any:
        stamps.stamp(call)
        try:
            return run(self, inputs, timeout=timeout)
        finally:
            stamps.stamp(done)

    def stamped_arun(self: Any, *args: Any) -> Any:
        stamps.stamp(start)

        def answered(outcome: Any) -> Any:
            stamps.stamp(fired)
            return outcome

        return arun(self, *args).addBoth(answered)

    blocking.run, asynchronous._run = stamped_run, stamped_arun

    def undo() -> None:
        blocking.run, asynchronous._run = run, arun

    return undo


def small_runs(runs: int, folder: Path, workdir: Path) -> dict[str, Any]:
    """Start the daemons with stamps on, do C{runs} small runs; their p50 and where the
    stamps are."""
    import numpy as np

    os.environ["COMPASS_BENCH_STAMPS"] = str(folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HOOK)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    hook = _load_hook()

    from compassd.client import connect_tracker
    from tests.fakedriver.build import build_fake_driver
    from tests.fakedriver.graphs import Tensor, write_graph
    from tests.helpers import daemon_log, start_twistd, stop

    graph = str(workdir / "small.bin")
    write_graph(graph, [Tensor(16, "int8")], [Tensor(16, "int8")])
    tracker, tracker_port = start_twistd("compass-tracker")
    server = None
    try:
        server, _ = start_twistd(
            "compass-server", "--key", KEY, "--tracker", f"127.0.0.1:{tracker_port}",
            "--backend", "aipu", "--driver", str(build_fake_driver()),
            "--workdir", str(workdir / "work"), "--device", "bench-1")
        client = connect_tracker("127.0.0.1", tracker_port)
        with client.request(KEY, wait=60, wait_for_board=True) as lease:
            model = lease.open_session().load_model(graph)
            x = np.arange(16, dtype=np.int8)
            for _ in range(50):  # warm up
                model.run(x)
            undo = _stamp_client(hook, model)
            times, backend = [], []
            try:
                for _ in range(runs):
                    t0 = time.perf_counter()
                    model.run(x)
                    times.append(time.perf_counter() - t0)
                    backend.append(model.last_seconds or 0.0)
            finally:
                undo()
        client.close()
        return {"run_p50": statistics.median(times), "backend_p50": statistics.median(backend),
                "backend": backend, "client": os.getpid(), "board": server.pid,
                "tracker": tracker.pid, "load": os.getloadavg()}
    except BaseException:
        if server is not None:
            print(daemon_log(server)[-4000:], file=sys.stderr)
        raise
    finally:
        if server is not None:
            stop(server)
        stop(tracker)


# --- the breakdown ---------------------------------------------------------------------


def _runs_from(folder: Path, pids: dict[str, Any]) -> list[dict[str, tuple[int, int]]]:
    """Each run's stamps by name (C{c.}, C{b.}, C{e.} for the client, board and
    executor's reads and writes; C{client.*} for the client's own): (monotonic ns,
    thread CPU ns). A read's or write's start is its first in the run, its end its last."""
    hook = _load_hook()
    prefix = {pids["client"]: "c.", pids["board"]: "b."}
    found = {int(path.stem): hook.read(str(path)) for path in folder.glob("*.stamps")}
    executors = [pid for pid in found if pid not in prefix and pid != pids["tracker"]]
    # the executor that served the session took the most stamps (a spare took a few)
    prefix[max(executors, key=lambda pid: len(found[pid]))] = "e."
    events = []
    for pid, stamps in found.items():
        if pid not in prefix:
            continue
        # keep the descriptor each kind of event used most: the session's connection
        # and the session's executor pipes, not the tracker link or a spare executor
        counts = Counter((name[:-1], fd) for _, _, name, fd in stamps)
        busiest: dict[str, tuple[int, int]] = {}
        for (kind, fd), n in counts.items():
            if n > busiest.get(kind, (0, -1))[0]:
                busiest[kind] = (n, fd)
        events += [(t, cpu, pid, name) for t, cpu, name, fd in stamps
                   if busiest[name[:-1]][1] == fd]
    events.sort()
    runs: list[dict[str, tuple[int, int]]] = []
    current: dict[str, tuple[int, int]] | None = None
    for t, cpu, pid, name in events:
        if name == "client.call":
            current = {}
            runs.append(current)
        if current is None:
            continue
        key = name if name.startswith("client.") else prefix[pid] + name
        if key.endswith("0") or key.startswith("client."):
            current.setdefault(key, (t, cpu))
        else:
            current[key] = (t, cpu)
    return runs


def _owner(stamp: str) -> str:
    """Which thread takes a stamp: the caller's, or a process's reactor."""
    if stamp in ("client.call", "client.return"):
        return "caller"
    return "c." if stamp.startswith("client.") else stamp[:2]


def breakdown(folder: Path, pids: dict[str, Any], backend: list[float]
              ) -> tuple[list[tuple[str, ...]], dict[str, float], int, int]:
    """The table's rows, the sum of the p50s of each group of segments, how many runs
    had every stamp and how many were stamped. C{backend}: each run's seconds in the
    backend, as the board reported them (the executor's row is split by it)."""
    runs = _runs_from(folder, pids)
    names = [CHAIN[0][0]] + [end for _, end, _ in CHAIN]
    whole = [(r, backend[i] * 1e6 if i < len(backend) else 0.0)
             for i, r in enumerate(runs) if all(n in r for n in names)]
    rows = []
    groups = dict.fromkeys(GROUPS, 0.0)

    def row(what: str, walls: list[float], cpu: str) -> None:
        walls.sort()
        p50 = statistics.median(walls)
        rows.append((what, f"{p50:.1f}", f"{walls[int(0.9 * (len(walls) - 1))]:.1f}", cpu))
        groups[what.split(":")[0]] += p50

    for start, end, what in CHAIN:
        cpu = "-"
        if _owner(start) == _owner(end):
            cpu = f"{statistics.median((r[end][1] - r[start][1]) / 1e3 for r, _ in whole):.1f}"
        if start == "e.pipe.read0":
            row(EXECUTOR, [(r[end][0] - r[start][0]) / 1e3 - b for r, b in whole], "-")
            row(BACKEND, [b for _, b in whole], "-")
            continue
        row(what, [(r[end][0] - r[start][0]) / 1e3 for r, _ in whole], cpu)
    return rows, groups, len(whole), len(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2000, help="runs timed (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 runs, a smoke run")
    options = parser.parse_args(argv)
    runs = 200 if options.quick else options.runs
    ping = ping_pong(max(runs, 1000))
    with tempfile.TemporaryDirectory(prefix="compass-smallrun-") as tmp:
        folder = Path(tmp) / "stamps"
        folder.mkdir()
        result = small_runs(runs, folder, Path(tmp))
        rows, groups, whole, taken = breakdown(folder, result, result["backend"])
    load = ", ".join(f"{x:.2f}" for x in result["load"])
    print(f"small run (16-byte identity graph, aipu backend on the fake driver): {taken}"
          f" runs, {whole} with every stamp; load average {load}; {os.cpu_count()} CPUs")
    print(f"run p50 {result['run_p50'] * 1e3:.3f} ms (stamped); raw ping-pong p50"
          f" {ping * 1e3:.3f} ms; ratio {result['run_p50'] / ping:.1f}x;"
          f" backend's own time p50 {result['backend_p50'] * 1e6:.1f} us (in the executor)")
    header = ("segment", "p50 us", "p90 us", "cpu p50 us")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print("sums of p50s: " + ", ".join(f"{g} {groups[g]:.0f} us" for g in GROUPS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
