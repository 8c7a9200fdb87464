"""How fast a session on compass-server opens, runs a model and moves tensors.

Run from the repository root::

    .venv/bin/python bench/session.py            # defaults: well under a minute and a half
    .venv/bin/python bench/session.py --quick    # a smoke run of a few seconds

A real tracker and a real compass-server (``--backend aipu`` on the fake
``libaipudrv.so`` that ``tests/fakedriver`` builds, through the real C extension) run as
subprocesses on 127.0.0.1; the client is the real blocking L{compassd.client}. Every
figure sits beside a baseline measured in the same run with plain sockets or numpy:

- **session open**: C{OpenSession} after the grant, with a warm spare executor, against a
  raw TCP connect plus one 64-byte ping-pong;
- **small run**: the blocking client's C{Model.run} of a 16-byte identity graph, timed in
  the caller's thread from the call until the outputs are returned (the thread hand-off,
  client -> board -> executor -> fake driver -> back; C{bench/smallrun.py} splits it by
  hop) against a raw Python socket ping-pong over loopback;
- **upload** and **tensor round trip**: a C{--mib} MiB file, and a float32 tensor of
  that size through an identity graph, against raw loopback TCP throughput;
- **server <-> executor handoff**, in a child process through L{ExecutorHandle}: write
  the tensor into the arena, C{Execute} the identity graph, read the output back, and the
  arena copies alone, against C{memcpy} bandwidth measured with numpy.

Targets come from the issue and are reported, never asserted.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _table import mbs as _mbs
from _table import ms as _ms
from _table import percentile, print_table
from _table import ratio as _ratio
from _table import timed as _timed
from _table import verdict as _verdict

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "bench-session"
MIB = 1 << 20
PING = b"x" * 64
WAIT = 60.0


# --- small helpers ---------------------------------------------------------------------






def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) process C{pid} has used so far, from
    C{/proc}; NaN where there is no C{/proc}."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("the peer closed early")
        got += n


# --- baselines: plain sockets over loopback and numpy memcpy ---------------------------


def _raw_server(port_out: Any, size: int) -> None:
    """Serve, one connection at a time: ``p`` echo a 64-byte ping; ``s`` swallow C{size}
    bytes then answer one byte; ``e`` echo C{size} bytes back; ``q`` stop."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port_out.put(listener.getsockname()[1])
    buffer = bytearray(max(size, 1))
    view = memoryview(buffer)
    ping = bytearray(len(PING))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                mode = conn.recv(1)
                if mode in (b"", b"q"):
                    break
                if mode == b"p":
                    _recv_exactly(conn, memoryview(ping))
                    conn.sendall(ping)
                elif mode == b"s":
                    _recv_exactly(conn, view[:size])
                    conn.sendall(b"k")
                elif mode == b"e":
                    _recv_exactly(conn, view[:size])
                    conn.sendall(view[:size])
            if mode == b"q":
                break
    listener.close()


def baselines(ctx: Any, size: int, seconds: float, transfers: int) -> dict[str, Any]:
    """Raw TCP ping-pong, connect+ping, one-way and echo throughput; numpy memcpy."""
    import numpy as np

    ports = ctx.Queue()
    server = ctx.Process(target=_raw_server, args=(ports, size), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)

        def connect_ping() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(b"p" + PING)
                _recv_exactly(s, memoryview(bytearray(len(PING))))

        connects = _timed(seconds / 4, 5, 2000, connect_ping)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer = memoryview(bytearray(len(PING)))

        def ping() -> None:
            sock.sendall(b"p" + PING)
            _recv_exactly(sock, answer)

        pings = _timed(seconds / 2, 50, 100_000, ping)
        payload = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8).tobytes()
        back = memoryview(bytearray(size))

        def send() -> None:
            sock.sendall(b"s")
            sock.sendall(payload)
            _recv_exactly(sock, back[:1])

        def echo() -> None:
            sock.sendall(b"e")
            sock.sendall(payload)
            _recv_exactly(sock, back)

        sends = _timed(0, transfers, transfers, send)
        # CPU time of both ends per byte sent one way, over at least 512 MiB (the
        # system's clock ticks are 10 ms)
        count = max(transfers, -(-(512 << 20) // size))
        cpu0 = cpu_seconds(os.getpid()) + cpu_seconds(server.pid)
        _timed(0, count, count, send)
        send_cpu = (cpu_seconds(os.getpid()) + cpu_seconds(server.pid) - cpu0) / (count * size)
        echoes = _timed(0, transfers, transfers, echo)
        sock.sendall(b"q")
        sock.close()
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join(5)
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    copies = _timed(0, max(3, transfers * 2), max(3, transfers * 2),
                    lambda: np.copyto(dst, src))
    import hashlib

    hashes = _timed(0, transfers, transfers, lambda: hashlib.sha256(payload).digest())
    return {
        "sha256_rate": size / min(hashes),
        "ping_p50": percentile(pings, 50),
        "connect_p50": percentile(connects, 50),
        "send_rate": size / min(sends),
        "send_cpu": send_cpu,
        "echo_rate": 2 * size / min(echoes),
        "memcpy_rate": size / min(copies),
    }


# --- the server <-> executor handoff, in a child process with its own reactor ---------


def _handoff(driver: str | None, graph: str, size: int, repeats: int, results: Any,
             backend: str = "aipu") -> None:
    import numpy as np
    from twisted.internet import defer, task

    from compassd.executor.arena import Arena, Slot, align_up
    from compassd.executor.handle import spawn_executor
    from compassd.server.session import _arena_chunks

    @defer.inlineCallbacks
    def measure(reactor: Any) -> Any:
        workdir = tempfile.mkdtemp(prefix="compass-bench-")
        shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(workdir)
        arena = Arena.create(shm / f"compass-bench-arena-{os.getpid()}", 4 * size + (1 << 20))
        handle = spawn_executor(reactor, backend, driver=driver, tag="bench")
        try:
            yield handle.when_ready()
            name = os.path.basename(graph)
            os.link(graph, Path(workdir) / name)
            yield handle.attach(workdir, arena.path, arena.size, "bench")
            model, _inputs, _outputs = yield handle.load(name)
            x = np.arange(size // 4, dtype=np.float32)
            out_at = align_up(size)
            whole: list[float] = []
            copies: list[float] = []
            runs: list[float] = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                slot = arena.write(_inputs[0].name, x, 0)
                t1 = time.perf_counter()
                outs, _ = yield handle.execute(model, [slot], out_at, arena.size - out_at)
                t2 = time.perf_counter()
                # the output leaves the arena as the board sends it: in OUTPUT_CHUNK pieces
                got = sum(len(chunk) for chunk in _arena_chunks(arena, outs))
                t3 = time.perf_counter()
                assert got == size
                whole.append(t3 - t0)
                copies.append((t1 - t0) + (t3 - t2))
                runs.append(t2 - t1)
            check = Slot("y", "float32", (size // 4,), outs[0].offset, size)
            assert np.array_equal(arena.read(check, copy=False), x)
            results.put({"whole": min(whole), "copies": min(copies), "execute": min(runs)})
        finally:
            handle.kill()
            arena.close()
            os.unlink(arena.path)
            for name in os.listdir(workdir):
                os.unlink(Path(workdir) / name)
            os.rmdir(workdir)

    task.react(measure)


def handoff(ctx: Any, driver: str | None, graph: str, size: int, repeats: int,
            backend: str = "aipu") -> dict[str, Any]:
    results = ctx.Queue()
    child = ctx.Process(target=_handoff, args=(driver, graph, size, repeats, results,
                                               backend))
    child.start()
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                return results.get(timeout=0.2)  # type: ignore[no-any-return]
            except Exception:  # queue.Empty
                if not child.is_alive():
                    break
        raise RuntimeError(f"The handoff child ended with {child.exitcode} and no result.")
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)


def onnx_identity(path: Path, size: int) -> str | None:
    """An ONNX graph copying a float32 tensor of C{size} bytes (fixed shape), or None
    without the onnx package."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return None
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [size // 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [size // 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


# --- the session through real daemons -------------------------------------------------


def session_bench(options: argparse.Namespace, driver: str, graphs: dict[str, str],
                  workdir: Path) -> dict[str, Any]:
    import numpy as np

    from compassd.client import connect_tracker
    from compassd.protocol.session import FEATURE_DIGEST_AFTER
    from tests.helpers import daemon_log, start_twistd, stop

    size = options.mib << 20
    tracker, tracker_port = start_twistd("compass-tracker")
    server = None
    try:
        server, _ = start_twistd(
            "compass-server", "--key", KEY, "--tracker", f"127.0.0.1:{tracker_port}",
            "--backend", "aipu", "--driver", driver, "--workdir", str(workdir / "work"),
            "--device", "bench-1", "--max-upload",
            str(4 * size + 2 * (options.model_mib << 20) + (1 << 20)))
        client = connect_tracker("127.0.0.1", tracker_port)
        opens: list[float] = []
        for i in range(options.opens):
            _wait_for_spare(server, i + 1)
            with client.request(KEY, wait=WAIT) as lease:
                t0 = time.perf_counter()
                lease.open_session()
                opens.append(time.perf_counter() - t0)
        with client.request(KEY, wait=WAIT) as lease:
            session = lease.open_session()
            small = session.load_model(graphs["small"])
            x = np.arange(16, dtype=np.int8)
            small.run(x)
            runs = _timed(options.seconds / 3, 50, 100_000, lambda: small.run(x))
            blob = workdir / "blob.bin"
            blob.write_bytes(np.random.default_rng(2).integers(0, 255, size, np.uint8)
                             .tobytes())
            uploads = [_first_upload(session, blob, i) for i in range(options.transfers)]
            model = workdir / "model.bin"
            model_size = options.model_mib << 20
            model.write_bytes(np.random.default_rng(3).integers(
                0, 255, model_size, np.uint8).tobytes())
            cpu0 = cpu_seconds(os.getpid()) + cpu_seconds(server.pid)
            firsts = [_first_upload(session, model, i) for i in range(options.transfers)]
            first_cpu = ((cpu_seconds(os.getpid()) + cpu_seconds(server.pid) - cpu0)
                         / (options.transfers * model_size))
            # the same as an older board gets it: hashed whole, then asked, then sent
            features = session._session.features
            session._session.features = features - {FEATURE_DIGEST_AFTER}
            olds = [_first_upload(session, model, options.transfers + i)
                    for i in range(options.transfers)]
            session._session.features = features
            hits = _timed(0, 20, 20, lambda: session.upload(str(model), "model.bin"))
            assert "model.bin" in session.cached, "the unchanged model was sent again"
            big = session.load_model(graphs["big"])
            t = np.arange(size // 4, dtype=np.float32)
            (y,) = big.run(t)
            assert np.array_equal(y, t), "the identity graph changed the tensor"
            trips = _timed(0, options.transfers, options.transfers, lambda: big.run(t))
        client.close()
        return {"open_p50": percentile(opens, 50), "opens": len(opens),
                "run_p50": percentile(runs, 50), "runs": len(runs),
                "upload_rate": size / min(uploads), "trip_rate": 2 * size / min(trips),
                "first_upload": min(firsts), "first_rate": model_size / min(firsts),
                "first_cpu": first_cpu,
                "old_rate": model_size / min(olds),
                "hit_p50": percentile(hits, 50)}
    except BaseException:
        if server is not None:
            print(daemon_log(server)[-4000:], file=sys.stderr)
        raise
    finally:
        if server is not None:
            stop(server)
        stop(tracker)


def _first_upload(session: Any, path: Path, i: int) -> float:
    """Seconds to upload C{path} after changing its first 16 bytes, so that its content
    is new to the board's cache and its SHA-256 new to the client."""
    with open(path, "r+b") as f:
        f.write(i.to_bytes(8, "little") + os.urandom(8))
    t0 = time.perf_counter()
    session.upload(str(path), path.name)
    took = time.perf_counter() - t0
    assert path.name not in session.cached, "a first upload came from the cache"
    return took


SPARE_READY = "a warm spare executor is ready for the next session"


def _wait_for_spare(server: Any, count: int) -> None:
    """Wait until the board has logged its C{count}-th warm spare as ready, so the next
    open attaches a spare that is really warm (it logs one at start and one after each
    session), or fail after L{WAIT} seconds."""
    from tests.helpers import daemon_log

    end = time.monotonic() + WAIT
    while daemon_log(server).count(SPARE_READY) < count:
        if time.monotonic() > end:
            raise RuntimeError(f"The board logged no warm spare #{count} in {WAIT:g} s.")
        time.sleep(0.02)


# --- the table -------------------------------------------------------------------------










def build_rows(options: argparse.Namespace, base: dict[str, Any], s: dict[str, Any],
               h: dict[str, Any], o: dict[str, Any] | None = None
               ) -> list[tuple[str, str, str, str, str, str]]:
    mib = options.mib
    # The first upload's CPU spread over every core, and no faster than one core hashes
    # (each end hashes every byte in one thread)
    bound = min((os.cpu_count() or 1) / s["first_cpu"], base["sha256_rate"])
    whole_rate = 2 * options.mib * (1 << 20) / h["whole"]
    copy_rate = 2 * options.mib * (1 << 20) / h["copies"]
    label = f"executor handoff {mib} MiB, onnx backend (IO binding)"
    if o is None:
        onnx_row = (label + ": no onnx package", "-", "-", "-", ">= 0.50x", "-")
    else:
        onnx_rate = 2 * options.mib * (1 << 20) / o["whole"]
        onnx_row = (label, _mbs(onnx_rate), _mbs(base["memcpy_rate"]),
                    _ratio(onnx_rate, base["memcpy_rate"]), ">= 0.50x",
                    _verdict(onnx_rate >= 0.5 * base["memcpy_rate"]))
    return [
        ("session open p50 (warm spare)", _ms(s["open_p50"]), _ms(base["connect_p50"]),
         _ratio(s["open_p50"], base["connect_p50"]), "< 50 ms",
         _verdict(s["open_p50"] < 0.050)),
        ("small run p50 (blocking Model.run, 16 B identity graph)", _ms(s["run_p50"]),
         _ms(base["ping_p50"]),
         _ratio(s["run_p50"], base["ping_p50"]), "< 0.5 ms and <= 10x",
         _verdict(s["run_p50"] < 0.0005 and s["run_p50"] <= 10 * base["ping_p50"])),
        (f"upload {mib} MiB (hashed while sent)", _mbs(s["upload_rate"]), _mbs(base["send_rate"]),
         _ratio(s["upload_rate"], base["send_rate"]), ">= 0.60x",
         _verdict(s["upload_rate"] >= 0.6 * base["send_rate"])),
        (f"upload {options.model_mib} MiB model, first time (hashed while sent)",
         _mbs(s["first_rate"]), _mbs(base["send_rate"]),
         _ratio(s["first_rate"], base["send_rate"]), ">= 0.50x",
         _verdict(s["first_rate"] >= 0.5 * base["send_rate"])),
        (f"upload {options.model_mib} MiB model, first time: CPU per MiB, client+board",
         _ms(s["first_cpu"] * MIB), _ms(base["send_cpu"] * MIB),
         _ratio(s["first_cpu"], base["send_cpu"]), "-", "-"),
        (f"upload {options.model_mib} MiB model, first time: most this machine allows",
         _mbs(bound), _mbs(base["send_rate"]), _ratio(bound, base["send_rate"]), "-", "-"),
        (f"upload {options.model_mib} MiB model, first time, hashed first (older board)",
         _mbs(s["old_rate"]), _mbs(base["send_rate"]),
         _ratio(s["old_rate"], base["send_rate"]), "-", "-"),
        (f"upload {options.model_mib} MiB model again, unchanged (cache hit)",
         _ms(s["hit_p50"]), _ms(s["first_upload"]), _ratio(s["hit_p50"], s["first_upload"]),
         "<= 5 ms", _verdict(s["hit_p50"] <= 0.005)),
        (f"sha256 of {mib} MiB (each end of an upload)", _mbs(base["sha256_rate"]),
         _mbs(base["send_rate"]), _ratio(base["sha256_rate"], base["send_rate"]), "-", "-"),
        (f"tensor round trip {mib} MiB float32", _mbs(s["trip_rate"]),
         _mbs(base["echo_rate"]), _ratio(s["trip_rate"], base["echo_rate"]), ">= 0.60x",
         _verdict(s["trip_rate"] >= 0.6 * base["echo_rate"])),
        (f"executor handoff {mib} MiB (write+Execute+read)", _mbs(whole_rate),
         _mbs(base["memcpy_rate"]), _ratio(whole_rate, base["memcpy_rate"]), ">= 0.50x",
         _verdict(whole_rate >= 0.5 * base["memcpy_rate"])),
        (f"arena copies {mib} MiB (write+read)", _mbs(copy_rate),
         _mbs(base["memcpy_rate"]), _ratio(copy_rate, base["memcpy_rate"]), ">= 0.50x",
         _verdict(copy_rate >= 0.5 * base["memcpy_rate"])),
        onnx_row,
    ]




def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="time spent on each latency measure in all (default 6)")
    parser.add_argument("--mib", type=int, default=64,
                        help="MiB per upload and per tensor (default 64)")
    parser.add_argument("--transfers", type=int, default=5,
                        help="uploads and tensor round trips timed, best kept (default 5)")
    parser.add_argument("--opens", type=int, default=5,
                        help="sessions opened for the open latency (default 5)")
    parser.add_argument("--model-mib", type=int, default=256,
                        help="MiB of the model uploaded first and again (default 256)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (a few seconds)")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds, options.mib, options.transfers, options.opens = 0.6, 4, 2, 1
        options.model_mib = 4
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    from tests.fakedriver.build import build_fake_driver
    from tests.fakedriver.graphs import Tensor, write_graph

    started = time.monotonic()
    ctx = mp.get_context("spawn")
    driver = str(build_fake_driver())
    size = options.mib << 20
    with tempfile.TemporaryDirectory(prefix="compass-bench-") as tmp:
        workdir = Path(tmp)
        graphs = {"small": str(workdir / "small.bin"), "big": str(workdir / "big.bin")}
        write_graph(graphs["small"], [Tensor(16, "int8")], [Tensor(16, "int8")])
        write_graph(graphs["big"], [Tensor(size, "float32")], [Tensor(size, "float32")])
        base = baselines(ctx, size, options.seconds, options.transfers)
        h = handoff(ctx, driver, graphs["big"], size, options.transfers)
        identity = onnx_identity(workdir / "identity.onnx", size)
        o = (handoff(ctx, None, identity, size, options.transfers, "onnx")
             if identity is not None else None)
        s = session_bench(options, driver, graphs, workdir)
    print(f"compass-server session bench: aipu backend on the fake driver;"
          f" {options.mib} MiB tensors; {s['opens']} opens, {s['runs']} small runs;"
          f" {os.cpu_count()} CPUs; {time.monotonic() - started:.0f} s")
    print_table(build_rows(options, base, s, h, o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
