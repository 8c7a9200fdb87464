"""How fast compass-tracker grants, and what it costs at scale.

Run from the repository root::

    .venv/bin/python bench/tracker.py            # defaults: about a minute
    .venv/bin/python bench/tracker.py --quick    # a smoke run of a few seconds

Two parts, one table:

- **Loopback.** The real tracker (``twistd -n compass-tracker``) runs as a subprocess on
  127.0.0.1 with one board holding one device per client. Client processes (one
  connection each, the real L{compassd.client.AsyncTracker}) repeat request -> grant ->
  release for C{--seconds}. Baseline: the same number of processes doing raw TCP
  ping-pong against a single-threaded echo server with plain sockets. The tracker runs
  without a store (``--store none``), then once more with its default SQLite store (in
  a temporary directory): the store's rows compare the two in the same run.
- **Scale.** A child process holds the scheduling core (L{Scheduler} in a
  L{TrackerService}) with C{--devices} devices, all leased, and C{--queued} waiting
  requests: its RSS (baseline: the same process before building), the cost of one
  release+grant+request cycle at 1 %, 10 % and 100 % of C{--queued} (baseline: the
  smallest), and what one queue-position push costs after a grant.

Targets come from the issue and are reported, never asserted.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from _table import mb as _mb
from _table import ms as _ms
from _table import percentile, print_table
from _table import ratio as _ratio
from _table import us as _us
from _table import verdict as _verdict

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "bench-npu"
PING = b"x" * 64
_TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
_LISTENING = re.compile(rb"compass-tracker listening on tcp 127\.0\.0\.1:(\d+)")


# --- small helpers ---------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc (Linux); 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used, from /proc (Linux); nan if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")




def _collect(queue: Any, count: int, deadline: float, what: str) -> list[Any]:
    """C{count} messages from C{queue} before C{deadline}, or a sentence saying why not."""
    got: list[Any] = []
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"Only {len(got)} of {count} {what} answered in time.")
        try:
            got.append(queue.get(timeout=min(left, 1.0)))
        except Exception:  # queue.Empty
            continue
    return got


def _stop_processes(processes: list[Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.terminate()
            p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


# --- baseline: raw TCP over loopback ---------------------------------------------------


def _echo_server(port_out: Any, stop: Any) -> None:
    """A single-threaded echo server with plain sockets, like the tracker's one thread."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    port_out.put(listener.getsockname()[1])
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _addr = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                sock.sendall(data)
            else:
                sel.unregister(sock)
                sock.close()
    listener.close()


def _echo_client(port: int, seconds: float, ready: Any, start: Any, results: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ready.put(True)
    start.wait(60)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        sock.sendall(PING)
        got = 0
        while got < len(PING):
            chunk = sock.recv(len(PING) - got)
            if not chunk:
                raise RuntimeError("The echo server closed the connection.")
            got += len(chunk)
        latencies.append(time.perf_counter() - t0)
    sock.close()
    results.put({"cycles": len(latencies), "latencies": latencies, "error": None})


def run_clients(
    ctx: Any, target: Any, args: tuple[Any, ...], clients: int, seconds: float, server: int
) -> dict[str, Any]:
    """Start C{clients} processes of C{target}, start them together, and pool what they
    measured: cycles per second (all together), latencies, and the CPU time the server
    (process C{server}) spent per cycle meanwhile."""
    ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(target=target, args=(*args, f"bench{i}", seconds, ready, start, results))
        for i in range(clients)
    ]
    for p in processes:
        p.start()
    try:
        _collect(ready, clients, time.monotonic() + 60, "clients")
        cpu_before = cpu_seconds(server)
        start.set()
        outs = _collect(results, clients, time.monotonic() + seconds + 60, "clients")
        cpu = cpu_seconds(server) - cpu_before
    finally:
        start.set()
        _stop_processes(processes)
    errors = [o["error"] for o in outs if o["error"]]
    if errors:
        raise RuntimeError(f"A bench client failed: {errors[0]}")
    latencies = [x for o in outs for x in o["latencies"]]
    cycles = sum(o["cycles"] for o in outs)
    return {
        "rate": cycles / seconds,
        "cpu": cpu / cycles if cycles else math.nan,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def _named_echo_client(
    port: int, name: str, seconds: float, ready: Any, start: Any, results: Any
) -> None:
    _echo_client(port, seconds, ready, start, results)


def baseline(ctx: Any, clients: int, seconds: float) -> dict[str, Any]:
    port_out, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_echo_server, args=(port_out, stop))
    server.start()
    try:
        port = port_out.get(timeout=30)
        return run_clients(ctx, _named_echo_client, (port,), clients, seconds, server.pid)
    finally:
        stop.set()
        _stop_processes([server])


# --- the real tracker over loopback ----------------------------------------------------


def start_tracker(workdir: str, deadline_s: float = 30.0,
                  extra: tuple[str, ...] = (), store: str = "none",
                  ) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``twistd -n compass-tracker`` on 127.0.0.1 (any free port) logging to a file
    in C{workdir}, with C{--store STORE} and the options C{extra}; return the process and
    its port once it says it listens."""
    log_path = Path(workdir, "tracker.log")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    command = [
        sys.executable, "-c", _TWISTD, "-n", "--pidfile=", f"--logfile={log_path}",
        "compass-tracker", "--listen", "tcp:0:interface=127.0.0.1",
        "--max-queued-per-user", "0", "--store", store, *extra,
    ]
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if log_path.exists():
            found = _LISTENING.search(log_path.read_bytes())
            if found:
                return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_tracker(proc)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    raise RuntimeError(
        f"compass-tracker did not say it was listening within {deadline_s:g} s;"
        f" its log ends:\n{text[-2000:]}"
    )


def stop_tracker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _board(port: int, devices: int, ready: Any, stop: Any) -> None:
    """One board connection holding C{devices} devices of KEY; it heartbeats and accepts
    revocations until C{stop} is set. It never redeems tickets: the scheduler counts a
    lease from its grant, and a release within the claim timeout ends it either way."""
    from twisted.internet import reactor, task, threads
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from compassd.protocol import SUPPORTED_VERSIONS, Hello
    from compassd.protocol import board_tracker as bt
    from compassd.protocol.peer import CompassPeer

    class Board(CompassPeer):
        @bt.Revoke.responder
        def revoke(self, device: str, lease: str, reason: str, message: str) -> dict[str, Any]:
            return {}

    failure: list[str] = []

    def failed(f: Any) -> None:
        failure.append(f.getErrorMessage())
        ready.put(failure[0])
        if reactor.running:
            reactor.stop()

    def connected(board: Board) -> Any:
        d = board.callRemote(Hello, versions=list(SUPPORTED_VERSIONS), role="board",
                             user="bench-board")

        def greeted(answer: dict[str, Any]) -> Any:
            board.greeted = True
            from twisted.internet.defer import gatherResults

            return gatherResults([
                board.callRemote(bt.Register, device=f"npu-{i}", key=KEY,
                                 address=f"127.0.0.1:{20000 + i}")
                for i in range(devices)
            ])

        def registered(answers: list[dict[str, Any]]) -> Any:
            beat = task.LoopingCall(lambda: board.callRemote(bt.Heartbeat))
            beat.start(answers[0]["heartbeat"] if answers else 5.0, now=False)
            ready.put(None)
            def done(_: object) -> None:
                beat.stop()
                board.drop()
                reactor.stop()

            return threads.deferToThread(stop.wait, 600).addCallback(done)

        return d.addCallback(greeted).addCallback(registered)

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    reactor.callWhenRunning(
        lambda: connectProtocol(endpoint, Board()).addCallback(connected).addErrback(failed)
    )
    reactor.run()


def _tracker_client(
    port: int, user: str, seconds: float, ready: Any, start: Any, results: Any
) -> None:
    """Request, wait for the grant, release; again until C{seconds} have passed."""
    from twisted.internet import reactor, threads

    from compassd.client.asynchronous import AsyncTracker

    out: dict[str, Any] = {"cycles": 0, "latencies": [], "error": None}

    def failed(f: Any) -> None:
        out["error"] = f.getErrorMessage()
        ready.put(None)
        if reactor.running:
            reactor.stop()

    def connected(tracker: AsyncTracker) -> Any:
        ready.put(None)
        return threads.deferToThread(start.wait, 120).addCallback(lambda _: begin(tracker))

    def begin(tracker: AsyncTracker) -> None:
        deadline = time.perf_counter() + seconds

        def cycle(_: object = None) -> None:
            if time.perf_counter() >= deadline:
                tracker.close().addBoth(lambda _: reactor.stop())
                return
            t0 = time.perf_counter()

            def granted(lease: Any) -> Any:
                out["latencies"].append(time.perf_counter() - t0)
                return lease.release()

            def released(_: object) -> None:
                out["cycles"] += 1
                cycle()

            tracker.request(KEY).addCallback(granted).addCallback(released).addErrback(failed)

        cycle()

    reactor.callWhenRunning(
        lambda: AsyncTracker.connect(reactor, "127.0.0.1", port, user=user)
        .addCallback(connected)
        .addErrback(failed)
    )
    reactor.run()
    results.put(out)


_OBSERVED = ("--metrics", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1")
"""The tracker's options for the observed run: metrics and the dashboard on."""
_DASHBOARD = re.compile(rb"compass-tracker dashboard listening on tcp 127\.0\.0\.1:(\d+)")


def _watch_events(port: int, stop: threading.Event, seen: list[int]) -> None:
    """An open dashboard page: hold GET /events and count the bytes pushed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            seen[0] += len(data)


def tracker_loopback(ctx: Any, clients: int, seconds: float,
                     observed: bool = False, sqlite: bool = False) -> dict[str, Any]:
    """Request-grant-release cycles against a real tracker; C{observed}: with --metrics
    and --http on, and one dashboard page holding the live event stream; C{sqlite}: with
    the SQLite store on (else --store none)."""
    with tempfile.TemporaryDirectory(prefix="bench-tracker-") as workdir:
        store = os.path.join(workdir, "tracker.sqlite") if sqlite else "none"
        proc, port = start_tracker(workdir, extra=_OBSERVED if observed else (),
                                   store=store)
        watcher_stop = threading.Event()
        events = [0]
        if observed:
            found = None
            end = time.monotonic() + 30
            while found is None and time.monotonic() < end:
                found = _DASHBOARD.search(Path(workdir, "tracker.log").read_bytes())
                time.sleep(0.05)
            if found is None:
                raise RuntimeError("The tracker did not log its dashboard's port.")
            threading.Thread(target=_watch_events, daemon=True, name="dashboard page",
                             args=(int(found.group(1)), watcher_stop, events)).start()
        board_ready, board_stop = ctx.Queue(), ctx.Event()
        board = ctx.Process(target=_board, args=(port, clients, board_ready, board_stop))
        board.start()
        try:
            problem = _collect(board_ready, 1, time.monotonic() + 60, "boards")[0]
            if problem:
                raise RuntimeError(f"The bench board could not register: {problem}")
            idle_rss = rss_bytes(proc.pid)
            result = run_clients(ctx, _tracker_client, (port,), clients, seconds, proc.pid)
            result["idle_rss"] = idle_rss
            result["rss"] = rss_bytes(proc.pid)
            result["events_bytes"] = events[0]
            return result
        finally:
            watcher_stop.set()
            board_stop.set()
            _stop_processes([board])
            stop_tracker(proc)


# --- scale: the scheduling core with many devices and requests ------------------------


class _Owner:
    """A stand-in connection: it counts the notices the tracker would send it."""

    sent = 0

    def notify(self, command: Any, arguments: dict[str, Any]) -> None:
        _Owner.sent += 1


def _scale(devices: int, queued: int, users: int, cycles: int, results: Any) -> None:
    from compassd.tracker.records import Granted, Policy
    from compassd.tracker.scheduler import Scheduler
    from compassd.tracker.service import TrackerService

    class _NoClock:
        def seconds(self) -> float:
            return now

        def callLater(self, *args: Any, **kwargs: Any) -> None:
            return None

    now = 0.0
    rss_before = rss_bytes()
    tracker = TrackerService(reactor=_NoClock(), scheduler=Scheduler(Policy()))  # type: ignore[arg-type]
    scheduler = tracker.scheduler
    board = _Owner()
    owners = [_Owner() for _ in range(users)]
    for i in range(devices):
        scheduler.register(now, board, f"npu-{i:05d}", KEY, f"10.0.{i // 250}.{i % 250}:9090")
    leases: deque[tuple[str, str]] = deque()
    serial = 0

    def request() -> list[Any]:
        nonlocal serial
        user = serial % users
        serial += 1
        _, effects = scheduler.request(now, owners[user], f"user{user}", KEY)
        return effects

    def note_grants(effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, Granted):
                leases.append((effect.lease.id, effect.lease.user))

    while len(leases) < devices:
        note_grants(request())

    sizes = sorted({max(1, queued // 100), max(1, queued // 10), queued})
    costs: dict[int, float] = {}
    for size in sizes:
        while len(scheduler.requests) < size:
            request()
        # One cycle as the shell runs it: a release grants the next waiting request,
        # a new request keeps the queue this long, and the deadline timer is re-armed.
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(cycles):
                now += 0.001  # time moves: fair share re-keys users whose leases run
                lease, user = leases.popleft()
                effects = scheduler.release(now, lease, user)
                note_grants(effects)
                request()
                scheduler.next_deadline()
            best = min(best, (time.perf_counter() - t0) / cycles)
        costs[size] = best

    rss_after = rss_bytes()

    # The position push after one grant: every waiting request's place moves up by one.
    positions_t0 = time.perf_counter()
    scheduler.positions(KEY)
    positions_s = time.perf_counter() - positions_t0
    tracker._dirty_keys.add(KEY)
    tracker._push_positions()  # the first push tells everyone their place
    lease, user = leases.popleft()
    tracker.apply(scheduler.release(now, lease, user))
    _Owner.sent = 0
    push_t0 = time.perf_counter()
    tracker._push_positions()
    push_s = time.perf_counter() - push_t0
    notices = _Owner.sent

    sample = [(i * 7919 % queued, i) for i in range(queued)]
    sort_t0 = time.perf_counter()
    sorted(sample)
    sort_s = time.perf_counter() - sort_t0

    results.put({
        "rss_before": rss_before,
        "rss_after": rss_after,
        "costs": costs,
        "positions_s": positions_s,
        "push_s": push_s,
        "notices": notices,
        "sort_s": sort_s,
        "waiting": len(scheduler.requests),
        "leased": len(scheduler.leases),
    })


def scale(ctx: Any, devices: int, queued: int, users: int, cycles: int) -> dict[str, Any]:
    results = ctx.Queue()
    child = ctx.Process(target=_scale, args=(devices, queued, users, cycles, results))
    child.start()
    try:
        return _collect(results, 1, time.monotonic() + 600, "scale children")[0]
    finally:
        _stop_processes([child])


# --- the table -------------------------------------------------------------------------












def build_rows(options: argparse.Namespace, one: dict[str, Any], many: dict[str, Any],
               base_one: dict[str, Any], base_many: dict[str, Any],
               big: dict[str, Any], observed: dict[str, Any], stored: dict[str, Any],
               ) -> list[tuple[str, str, str, str, str, str]]:
    n = options.clients
    rows = [
        ("grant latency p50, 1 client", _ms(one["p50"]), _ms(base_one["p50"]),
         _ratio(one["p50"], base_one["p50"]), "< 2 ms", _verdict(one["p50"] < 0.002)),
        (f"grant latency p50, {n} clients", _ms(many["p50"]), _ms(base_many["p50"]),
         _ratio(many["p50"], base_many["p50"]), "< 2 ms", _verdict(many["p50"] < 0.002)),
        (f"grant latency p99, {n} clients", _ms(many["p99"]), _ms(base_many["p99"]),
         _ratio(many["p99"], base_many["p99"]), "-", "-"),
        (f"cycles/s, {n} clients", f"{many['rate']:.0f}/s", f"{base_many['rate']:.0f}/s",
         _ratio(many["rate"], base_many["rate"]), ">= 2000/s",
         _verdict(many["rate"] >= 2000)),
        (f"server CPU per cycle, {n} clients", _us(many["cpu"]), _us(base_many["cpu"]),
         _ratio(many["cpu"], base_many["cpu"]), "< 500 us (2000/s a core)",
         _verdict(many["cpu"] < 0.0005)),
        (f"tracker RSS after {n}-client run", _mb(many["rss"]), _mb(many["idle_rss"]),
         _ratio(many["rss"], many["idle_rss"]), "-", "-"),
        (f"cycles/s, {n} clients, --metrics --http, a page open",
         f"{observed['rate']:.0f}/s", f"{many['rate']:.0f}/s",
         _ratio(observed["rate"], many["rate"]), "-", "-"),
        (f"server CPU per cycle, {n} clients, --metrics --http, a page open",
         _us(observed["cpu"]), _us(many["cpu"]), _ratio(observed["cpu"], many["cpu"]),
         "-", "-"),
        # The same run with the SQLite store on; the baseline is the run without it.
        (f"cycles/s, {n} clients, SQLite store", f"{stored['rate']:.0f}/s",
         f"{many['rate']:.0f}/s", _ratio(stored["rate"], many["rate"]), ">= 2000/s",
         _verdict(stored["rate"] >= 2000)),
        (f"grant latency p50, {n} clients, SQLite store", _ms(stored["p50"]),
         _ms(many["p50"]), _ratio(stored["p50"], many["p50"]), "< 2 ms",
         _verdict(stored["p50"] < 0.002)),
    ]
    costs = big["costs"]
    sizes = sorted(costs)
    smallest = sizes[0]
    for size in sizes:
        cost = costs[size]
        if size == smallest:
            rows.append((f"per-grant core cost, {size} queued", _us(cost), "-", "-", "-", "-"))
            continue
        allowed = math.log(size) / math.log(max(smallest, 2))
        rows.append((
            f"per-grant core cost, {size} queued", _us(cost), _us(costs[smallest]),
            _ratio(cost, costs[smallest]), f"<= {allowed:.2f}x (log)",
            _verdict(cost / costs[smallest] <= allowed),
        ))
    rows += [
        (f"RSS, {options.devices} devices + {big['waiting']} queued", _mb(big["rss_after"]),
         _mb(big["rss_before"]), _ratio(big["rss_after"], big["rss_before"]), "< 500 MB",
         _verdict(big["rss_after"] < 500e6)),
        (f"all positions, {big['waiting']} queued", _ms(big["positions_s"]), _ms(big["sort_s"]),
         _ratio(big["positions_s"], big["sort_s"]),
         f"< {options.position_interval:g} s",
         _verdict(big["positions_s"] < options.position_interval)),
        ("position push after 1 grant", f"{_ms(big['push_s'])}, {big['notices']} notices",
         _ms(big["sort_s"]), _ratio(big["push_s"], big["sort_s"]), "-", "-"),
    ]
    return rows




def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each loopback run (default 5)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent client processes (default 8)")
    parser.add_argument("--devices", type=int, default=10_000,
                        help="devices in the scale part (default 10000)")
    parser.add_argument("--queued", type=int, default=100_000,
                        help="waiting requests in the scale part (default 100000)")
    parser.add_argument("--users", type=int, default=100,
                        help="users the queued requests belong to (default 100)")
    parser.add_argument("--cycles", type=int, default=2000,
                        help="grant cycles timed at each queue length (default 2000)")
    parser.add_argument("--quick", action="store_true",
                        help="small numbers for a smoke run (a few seconds)")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds, options.clients = 0.5, 2
        options.devices, options.queued, options.users, options.cycles = 50, 1000, 10, 100
    options.position_interval = 0.5  # compass-tracker's default --position-interval
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    ctx = mp.get_context("spawn")
    started = time.monotonic()
    base_one = baseline(ctx, 1, options.seconds)
    base_many = baseline(ctx, options.clients, options.seconds)
    one = tracker_loopback(ctx, 1, options.seconds)
    many = tracker_loopback(ctx, options.clients, options.seconds)
    observed = tracker_loopback(ctx, options.clients, options.seconds, observed=True)
    stored = tracker_loopback(ctx, options.clients, options.seconds, sqlite=True)
    big = scale(ctx, options.devices, options.queued, options.users, options.cycles)
    print(f"compass-tracker bench: {options.clients} clients x {options.seconds:g} s on"
          f" loopback; {options.devices} devices, {options.queued} queued,"
          f" {options.users} users; {os.cpu_count()} CPUs; {time.monotonic() - started:.0f} s")
    print_table(build_rows(options, one, many, base_one, base_many, big, observed, stored))
    return 0


if __name__ == "__main__":
    sys.exit(main())
