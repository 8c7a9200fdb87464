"""The processes bench/chaos.py starts besides the daemons: soak clients and fault actors.

Run as ``python bench/_chaos_client.py CONFIG.json client SLOT GENERATION`` (a soak
client) or ``... CONFIG.json actor KIND NUMBER`` (one fault that needs a lease: a driver
hang, a driver crash, a corrupted or truncated frame on a session connection).

Both write their own record as JSON lines (flushed one by one, so a process killed with
SIGKILL leaves every line it finished) and, for the injector, their current phase in a
small state file replaced atomically. Everything is bounded: each request has a wait,
each lease a length, each call a timeout, and the client stops when the stop file
appears or its deadline passes.

A soak client loops: request a device of a random pool with a random priority, wait and
lease; open the session; upload a blob of random bytes (and sometimes read it back);
upload and load a model; run it a few times on inputs whose answers are known (the ONNX
digit classifier's outputs computed locally with onnxruntime by bench/chaos.py; the fake
driver's "add" graph, whose answer is the input plus a constant computed with numpy);
sometimes benchmark it; think; release. Every answer is compared; a difference is a
``wrong`` line.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Record:
    """A JSON-lines log and a state file, both owned by one process."""

    def __init__(self, log: Path, state: Path) -> None:
        self._log = open(log, "a", encoding="utf-8")  # noqa: SIM115
        self._state = state
        self.phase = ""

    def line(self, event: str, **fields: Any) -> None:
        fields.update(t=round(time.time(), 4), ev=event)
        self._log.write(json.dumps(fields, default=str) + "\n")
        self._log.flush()

    def set_phase(self, phase: str, **fields: Any) -> None:
        self.phase = phase
        tmp = self._state.with_name(self._state.name + ".tmp")
        tmp.write_text(json.dumps({"phase": phase, "t": time.time(), **fields}))
        os.replace(tmp, self._state)


def _error(e: BaseException) -> dict[str, str]:
    return {"type": type(e).__name__, "msg": str(e)[:300]}


# --- models and their known answers ---------------------------------------------------


class Models:
    """The models a client runs and how to check their answers."""

    def __init__(self, config: dict[str, Any], workdir: Path, rng: random.Random) -> None:
        import numpy as np

        from tests.fakedriver.graphs import Tensor, write_graph

        self.np = np
        self.digits = config["digits_model"]
        with np.load(config["reference"], allow_pickle=False) as data:
            self.images = data["images"]
            self.probabilities = data["probabilities"]
            self.labels = data["digit"]
        self.graphs: list[tuple[str, int, int]] = []
        for elements in (1024, 262144):
            for delay in (20, 300):
                value = rng.randint(1, 100)
                path = workdir / f"add{value}-{elements}-{delay}.bin"
                size = elements * 4
                write_graph(path, [Tensor(size, "float32")], [Tensor(size, "float32")],
                            behaviour="add", value=value, delay_ms=delay)
                self.graphs.append((str(path), elements, value))

    def pick(self, key: str, rng: random.Random) -> tuple[str, Any, Any]:
        """(model path, inputs, check) for a device of C{key}; check(outputs) returns
        None when right, else what differs."""
        np = self.np
        if key.endswith("onnx"):
            start = rng.randrange(0, len(self.images) - 1)
            count = rng.randint(1, min(64, len(self.images) - start))
            rows = slice(start, start + count)
            images = np.ascontiguousarray(self.images[rows])

            def check_digits(outputs: list[Any]) -> str | None:
                probabilities, digits = outputs
                if not np.array_equal(digits, self.labels[rows]):
                    return f"digits of rows {start}..{start + count} differ"
                if not np.allclose(probabilities, self.probabilities[rows], rtol=1e-4,
                                   atol=1e-5):
                    return f"probabilities of rows {start}..{start + count} differ"
                return None

            return self.digits, {"image": images}, check_digits
        path, elements, value = rng.choice(self.graphs)
        x = np.random.default_rng(rng.getrandbits(32)).standard_normal(elements)
        x = x.astype(np.float32)
        expected = x + np.float32(value)

        def check_add(outputs: list[Any]) -> str | None:
            (y,) = outputs
            if y.dtype != np.float32 or y.shape != expected.shape:
                return f"output {y.dtype} {y.shape}, expected float32 {expected.shape}"
            if not np.array_equal(y, expected):
                return f"{int((y != expected).sum())} of {elements} elements differ"
            return None

        return path, x, check_add


# --- the soak client ------------------------------------------------------------------


def client(config: dict[str, Any], slot: int, generation: int) -> int:
    from compassd.client import CompassError, connect_tracker

    run = Path(config["run"])
    rng = random.Random(f"{config['seed']}/client/{slot}/{generation}")
    record = Record(run / f"client-{slot}-{generation}.log", run / f"client-{slot}.state")
    workdir = run / f"client-{slot}-{generation}"
    workdir.mkdir(exist_ok=True)
    models = Models(config, workdir, rng)
    record.line("start", slot=slot, gen=generation, pid=os.getpid())
    stop = Path(config["stop_file"])
    deadline = float(config["client_deadline"])
    host, port = "127.0.0.1", int(config["tracker_port"])
    tracker = None
    n = 0
    while not stop.exists() and time.time() < deadline:
        if tracker is None:
            try:
                tracker = connect_tracker(host, port, user=f"soak{slot}", timeout=10)
            except (CompassError, OSError) as e:
                record.line("connect-failed", **_error(e))
                record.set_phase("idle")
                time.sleep(rng.uniform(0.3, 1.0))
                continue
        n += 1
        key = rng.choice(config["keys"])
        priority = rng.randint(0, 5)
        wait = rng.uniform(3.0, 20.0)
        length = rng.uniform(6.0, 20.0)
        record.line("request", n=n, key=key, priority=priority, wait=round(wait, 2),
                    lease=round(length, 2))
        record.set_phase("requesting", n=n)

        def queued(request: str, position: int, devices: int, n: int = n) -> None:
            record.line("queued", n=n, request=request, position=position)
            record.set_phase("queued", n=n, request=request)

        try:
            lease = tracker.request(key, priority=priority, lease=length, wait=wait,
                                    on_queued=queued)
        except Exception as e:  # any end of a request is recorded, whatever it is
            record.line("request-failed", n=n, **_error(e))
            record.set_phase("idle")
            if not isinstance(e, CompassError):
                record.line("unexpected", n=n, **_error(e))
            if type(e).__name__ in ("TrackerUnreachable",) or not _connected(tracker):
                _close(tracker)
                tracker = None
            time.sleep(rng.uniform(0.1, 0.5))
            continue
        record.line("granted", n=n, request=lease.request, lease=lease.id,
                    device=lease.device, key=key)
        try:
            _use(lease, key, models, rng, record, n)
        except Exception as e:
            record.line("op-failed", n=n, lease=lease.id, device=lease.device,
                        op=record.phase, **_error(e))
        record.set_phase("releasing", n=n, lease=lease.id, device=lease.device)
        try:
            lease.release()
            record.line("released", n=n, lease=lease.id, device=lease.device)
        except Exception as e:
            record.line("release-failed", n=n, lease=lease.id, device=lease.device,
                        **_error(e))
            if not _connected(tracker):
                _close(tracker)
                tracker = None
        record.set_phase("idle")
        time.sleep(rng.uniform(0.0, 0.8))
    record.set_phase("exiting")
    if tracker is not None:
        _close(tracker)
    record.line("exit", requests=n)
    return 0


def _connected(tracker: Any) -> bool:
    try:
        return bool(tracker._connection.connected)
    except Exception:
        return False


def _close(tracker: Any) -> None:
    try:
        tracker.close()
    except Exception:
        pass


def _use(lease: Any, key: str, models: Models, rng: random.Random, record: Record,
         n: int) -> None:
    info = {"n": n, "lease": lease.id, "device": lease.device}
    record.set_phase("opening", **info)
    session = lease.open_session(timeout=15)
    blob = rng.randbytes(rng.choice((64 << 10, 1 << 20, 4 << 20, 8 << 20)))
    record.set_phase("upload", **info)
    t0 = time.time()
    session.upload(blob, "blob.bin")
    record.line("upload-ok", bytes=len(blob), secs=round(time.time() - t0, 3), **info)
    if rng.random() < 0.3:
        record.set_phase("download", **info)
        back = session.download("blob.bin")
        if bytes(back) != blob:
            record.line("wrong", what="download", detail="the blob read back differs",
                        **info)
        else:
            record.line("download-ok", **info)
    path, inputs, check = models.pick(key, rng)
    record.set_phase("load", **info)
    model = session.load_model(path)
    for _ in range(rng.randint(1, 4)):
        record.set_phase("run", **info)
        t0 = time.time()
        outputs = model.run(inputs, timeout=10)
        wrong = check(outputs)
        if wrong is None:
            record.line("run-ok", secs=round(time.time() - t0, 3), **info)
        else:
            record.line("wrong", what="run", model=Path(path).name, detail=wrong, **info)
    if rng.random() < 0.3:
        record.set_phase("benchmark", **info)
        rounds = model.benchmark(inputs, number=2, repeat=1, warmup=0)
        if not rounds or not all(r >= 0 for r in rounds):
            record.line("wrong", what="benchmark", detail=repr(rounds), **info)
        else:
            record.line("benchmark-ok", **info)
    record.set_phase("thinking", **info)
    time.sleep(rng.uniform(0.0, 1.0))


# --- a fault actor: a lease used to do one bad thing ----------------------------------


def actor(config: dict[str, Any], kind: str, number: int) -> int:
    """Take a device and do one bad thing on it: run a graph that hangs the fake driver
    (``hang``) or crashes the executor (``crash``), or write a corrupted or truncated box
    on the session's connection (``corrupt``, ``truncate``). Then release it."""
    from compassd.client import _reactor, connect_tracker
    from tests.fakedriver.graphs import Tensor, write_graph

    run = Path(config["run"])
    rng = random.Random(f"{config['seed']}/actor/{number}")
    record = Record(run / f"actor-{number}.log", run / f"actor-{number}.state")
    record.line("start", kind=kind, pid=os.getpid())
    key = config["npu_key"] if kind in ("hang", "crash") else rng.choice(config["keys"])
    tracker = connect_tracker("127.0.0.1", int(config["tracker_port"]), user="chaos",
                              timeout=10)
    try:
        try:
            lease = tracker.request(key, priority=9, lease=25, wait=20)
        except Exception as e:
            record.line("request-failed", **_error(e))
            return 0
        record.line("granted", request=lease.request, lease=lease.id, device=lease.device)
        try:
            session = lease.open_session(timeout=15)
            if kind in ("hang", "crash"):
                graph = run / f"actor-{number}-{kind}.bin"
                write_graph(graph, [Tensor(64, "int8")], [Tensor(64, "int8")],
                            behaviour=kind)
                model = session.load_model(str(graph))
                record.line("fault", at=time.time(), device=lease.device)
                try:
                    model.run(bytes(64) if False else _zeros(64), timeout=2)
                    record.line("result", outcome="ran", device=lease.device)
                except Exception as e:
                    record.line("result", outcome="failed", device=lease.device,
                                **_error(e))
            else:
                transport = session._session._protocol.transport
                if kind == "truncate":
                    # the start of an AMP box: a key, then a value that never comes
                    junk = b"\x00\x04_ask\x00\x011\x00\x08_command\x00\xff" + b"x" * 10
                else:
                    junk = rng.randbytes(rng.randint(1, 200))
                record.line("fault", at=time.time(), device=lease.device, bytes=len(junk))
                _reactor.call(lambda: transport.write(junk))
                if kind == "truncate":
                    _reactor.call(lambda: transport.loseConnection())
                end = time.time() + 15
                while session.active and time.time() < end:
                    time.sleep(0.1)
                record.line("result", outcome="ended" if not session.active else "open",
                            device=lease.device, message=session.end_message)
        except Exception as e:
            record.line("op-failed", **_error(e))
        try:
            lease.release()
            record.line("released", lease=lease.id, device=lease.device)
        except Exception as e:
            record.line("release-failed", **_error(e))
    finally:
        _close(tracker)
        record.line("exit")
    return 0


def _zeros(size: int) -> Any:
    import numpy as np

    return np.zeros(size, dtype=np.int8)


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[0]).read_text())
    role = argv[1]
    if role == "client":
        return client(config, int(argv[2]), int(argv[3]))
    if role == "actor":
        return actor(config, argv[2], int(argv[3]))
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
