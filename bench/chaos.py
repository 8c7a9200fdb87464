"""A chaos soak: random faults against a live compassd, then the invariants checked.

Run from the repository root::

    .venv/bin/python bench/chaos.py --short              # CI: about 3 minutes, seed 1
    .venv/bin/python bench/chaos.py --minutes 30 --seed 2  # the long mode

It starts on this machine, on 127.0.0.1 only: a tracker (with an audit log), a proxy,
four boards (two with the ONNX backend, two with the fake NPU driver of
tests/fakedriver through the real C extension; one of each behind the proxy) and N
client processes that request, upload, run, benchmark and release in loops with random
priorities, waits and leases (bench/_chaos_client.py). A fault-free phase measures the
throughput; a fault phase of the same length follows, in which an injector seeded by
--seed picks a fault every few seconds (bench/_chaos_faults.py: kill -9 of an executor,
a board, the proxy or the tracker, each started again as systemd would; SIGSTOP of a
board past its heartbeat timeout; clients killed mid-upload, mid-run or while queued; a
corrupted or truncated frame on a session connection; the fake driver's hang and crash;
a full session directory). Every fault is logged to faults.jsonl in the run directory.

At the end the clients stop, and the daemons' own records (the tracker's audit log and
live state, the clients' logs) and the machine (processes, session directories, arenas
in /dev/shm, cache temp files) are checked. The table it prints has a goal of 0 for
boards stuck, requests lost, wrong answers and leftovers, and the exit status is 1 when
one of them is not 0. Recovery times and throughput are reported, never asserted.

The fault schedule (which fault, when, which target) follows from --seed; what the
system does under it depends on timing, so two runs of one seed are alike, not equal.
Every process started is stopped by its PID, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _chaos_checks import (
    in_service,
    lost_requests,
    recovery,
    runs_in,
    store_history,
    stuck_leases,
    summarize,
)
from _chaos_faults import KINDS, Injector, _lines
from _chaos_system import (
    Daemon,
    Holder,
    arenas,
    die_with_us,
    executors,
    free_port,
    stop_all,
    workdir_leftovers,
)
from _table import print_table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ONNX_KEY, NPU_KEY = "chaos-onnx", "chaos-npu"
MAX_LEASE = 30.0
GRACE = 30.0
"""How long after its holder is gone a device may take to be free again, on top of the
lease (a lease outliving max-lease + GRACE is a stuck board)."""


class Client:
    """One soak client process in a slot."""

    def __init__(self, soak: Soak, slot: int, generation: int) -> None:
        self.slot = slot
        self.generation = generation
        self.log = soak.run / f"client-{slot}-{generation}.log"
        self._state = soak.run / f"client-{slot}.state"
        out = open(soak.run / f"client-{slot}-{generation}.out", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_chaos_client.py")),
             str(soak.config_path), "client", str(slot), str(generation)],
            cwd=str(soak.run), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_us)
        out.close()
        self.pid = self.process.pid
        self.killed = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state.read_text()))
        except (OSError, ValueError):
            return {}

    def kill9(self) -> None:
        self.killed = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


class Monitor(threading.Thread):
    """Polls the tracker's devices and waiting requests every half second."""

    def __init__(self, port: int) -> None:
        super().__init__(name="chaos monitor", daemon=True)
        self.port = port
        self.samples: list[tuple[float, dict[str, dict[str, Any]], set[str]]] = []
        self.halt = threading.Event()
        self.failures = 0

    def run(self) -> None:
        from compassd.client import connect_tracker

        tracker = None
        while not self.halt.is_set():
            try:
                if tracker is None:
                    tracker = connect_tracker("127.0.0.1", self.port, user="monitor",
                                              timeout=5)
                summary = tracker.summary()
                devices = {d["name"]: d for d in summary["devices"]}
                waiting = {w["request"] for q in summary["queues"]
                           for w in q.get("waiting", [])}
                self.samples.append((time.time(), devices, waiting))
            except Exception:
                self.failures += 1
                if tracker is not None:
                    try:
                        tracker.close()
                    except Exception:
                        pass
                tracker = None
            self.halt.wait(0.5)
        if tracker is not None:
            try:
                tracker.close()
            except Exception:
                pass

    def state(self, device: str) -> str | None:
        if not self.samples:
            return None
        row = self.samples[-1][1].get(device)
        return row["state"] if row else None

    def latest(self) -> dict[str, dict[str, Any]]:
        return self.samples[-1][1] if self.samples else {}


class Soak:
    def __init__(self, options: argparse.Namespace, run: Path) -> None:
        self.options = options
        self.run = run
        self.heartbeat_timeout = 4.0
        self.tag = f"c{os.getpid()}"
        self.clients: dict[int, Client] = {}
        self.past_clients: list[Client] = []
        self.extra: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Daemon] = []
        self.boards: list[Daemon] = []
        self.holder: Holder | None = None
        self.faults: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self._help: str | None = None

    # --- setup ------------------------------------------------------------------------

    def prepare(self) -> None:
        import numpy as np
        import onnxruntime

        from compassd.demo.runner import MODEL, load_samples
        from tests.fakedriver.build import build_fake_driver

        self.driver = str(build_fake_driver())
        images, _labels = load_samples()
        session = onnxruntime.InferenceSession(str(MODEL),
                                               providers=["CPUExecutionProvider"])
        probabilities, digit = session.run(None, {"image": images})
        reference = self.run / "reference.npz"
        np.savez(reference, images=images, probabilities=probabilities, digit=digit)
        self.store: Path | None = None
        if "--store" in self.tracker_help():
            # the tracker of issue 16: its own store here, never the machine's default
            self.store = self.run / "tracker.sqlite"
        self.config_path = self.run / "config.json"
        self.tracker_port = free_port()
        self.config = {
            "run": str(self.run), "seed": self.options.seed,
            "tracker_port": self.tracker_port, "keys": [ONNX_KEY, NPU_KEY],
            "npu_key": NPU_KEY, "digits_model": str(MODEL), "reference": str(reference),
            "stop_file": str(self.run / "stop"),
            "client_deadline": time.time() + 4 * self.options.phase + 600,
        }
        self.config_path.write_text(json.dumps(self.config, indent=1))

    def tracker_help(self) -> str:
        """What ``twistd compass-tracker --help`` says (once): which options it has."""
        if self._help is not None:
            return self._help
        from _chaos_system import environment

        done = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "compass-tracker", "--help"], capture_output=True, text=True, timeout=120,
            env=environment(), cwd=str(self.run))
        self._help = done.stdout
        return self._help

    def start(self) -> None:
        run = self.run
        tp = self.tracker_port
        stored = ["--store", f"sqlite:{self.store}"] if self.store else []
        if self.store and "--reattach-grace" in self.tracker_help():
            stored += ["--reattach-grace", "10"]
        self.tracker = Daemon("tracker", "compass-tracker", [
            "--listen", f"tcp:{tp}:interface=127.0.0.1", "--heartbeat-timeout",
            str(self.heartbeat_timeout), "--claim-timeout", "10", "--default-lease", "15",
            "--max-lease", str(MAX_LEASE), "--audit-log", str(run / "audit.jsonl"),
            "--idle-timeout", "0", *stored, *self.options.tracker_arg], run / "tracker.log",
            tp)
        self.tracker.start()
        self.daemons.append(self.tracker)
        pp = free_port()
        self.proxy = Daemon("proxy", "compass-proxy", [
            "--listen", f"tcp:{pp}:interface=127.0.0.1", "--tracker", f"127.0.0.1:{tp}",
            "--advertise", f"127.0.0.1:{pp}"], run / "proxy.log", pp)
        self.proxy.start()
        self.daemons.append(self.proxy)
        holder = Holder(run / "npu-1", 64)
        if holder.start():
            self.holder = holder
        else:
            self.notes.append("disk-full: no mount namespace here, so no small tmpfs;"
                              " the fault is skipped")
        for name, backend, proxied in (("onnx-1", "onnx", False), ("npu-1", "aipu", False),
                                       ("onnx-2", "onnx", True), ("npu-2", "aipu", True)):
            workdir = run / name
            workdir.mkdir(exist_ok=True)
            args = ["--key", ONNX_KEY if backend == "onnx" else NPU_KEY,
                    "--tracker", f"127.0.0.1:{tp}", "--backend", backend,
                    "--workdir", str(workdir), "--device", f"{self.tag}-{name}",
                    "--health-interval", "2", "--run-timeout", "5", "--max-upload", "24M",
                    "--max-lease", str(MAX_LEASE), "--min-free-disk", "2M",
                    "--min-free-shm", "2M", "--cache-size", "16M"]
            if backend == "aipu":
                args += ["--driver", self.driver]
            port = None
            if proxied:
                args += ["--proxy", f"127.0.0.1:{pp}"]
            else:
                port = free_port()
                args += ["--listen", f"tcp:{port}:interface=127.0.0.1",
                         "--advertise", f"127.0.0.1:{port}"]
            prefix = self.holder.prefix() if (name == "npu-1" and self.holder) else None
            board = Daemon(f"board {name}", "compass-server", args, run / f"{name}.log",
                           port, prefix=prefix)
            board.device = f"{self.tag}-{name}"  # type: ignore[attr-defined]
            board.proxied = proxied  # type: ignore[attr-defined]
            board.workdir = (self.holder.inside if prefix and self.holder  # type: ignore[attr-defined]
                             else workdir)
            board.start()
            self.daemons.append(board)
            self.boards.append(board)
        self.disk_board = self.boards[1]
        self.monitor = Monitor(tp)
        self.monitor.start()
        self.wait_devices(120.0, "to register at first")

    def devices(self) -> list[str]:
        return [b.device for b in self.boards]  # type: ignore[attr-defined]

    def wait_devices(self, deadline: float, why: str) -> bool:
        end = time.time() + deadline
        while time.time() < end:
            latest = self.monitor.latest()
            if all(in_service(latest.get(d), set()) and latest[d]["state"] == "free"
                   for d in self.devices()):
                return True
            time.sleep(0.25)
        return False

    def start_clients(self) -> None:
        for slot in range(self.options.clients):
            self.clients[slot] = Client(self, slot, 0)

    def restart_client(self, slot: int) -> None:
        old = self.clients[slot]
        self.past_clients.append(old)
        self.clients[slot] = Client(self, slot, old.generation + 1)

    # --- the phases -------------------------------------------------------------------

    def soak(self) -> None:
        say = self.say
        options = self.options
        self.start_clients()
        say(f"{options.clients} clients started; warming up for {options.warmup:g} s")
        time.sleep(options.warmup)
        self.calm = (time.time(), time.time() + options.phase)
        say(f"fault-free phase: {options.phase:g} s")
        time.sleep(options.phase)
        rng = random.Random(f"{options.seed}/faults")
        injector = Injector(self, rng)
        start = time.time()
        self.stormy = (start, start + options.phase)
        say(f"fault phase: {options.phase:g} s, a fault every {options.every[0]:g}"
            f"-{options.every[1]:g} s")
        kinds: list[str] = []
        log = open(self.run / "faults.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        count = 0
        next_at = start + rng.uniform(*options.every)
        every_kind = len([k for k in KINDS if k not in options.without])
        while count < options.max_faults and (
                time.time() < self.stormy[1]
                # each kind once, even on a slow machine, bounded
                or (count < every_kind and time.time() < self.stormy[1] + 90)):
            time.sleep(max(0.0, next_at - time.time()))
            if not kinds:
                kinds = [k for k in KINDS if k not in options.without]
                rng.shuffle(kinds)
            kind = kinds.pop()
            fault = injector.do(kind)
            count += 1
            self.faults.append(fault)
            log.write(json.dumps(fault, default=str) + "\n")
            log.flush()
            say(f"  fault {count}: {kind} {fault.get('target', '')}"
                + (f" (skipped: {fault['skipped']})" if "skipped" in fault else ""))
            next_at = max(time.time(), next_at) + rng.uniform(*options.every)
        self.stormy = (start, max(time.time(), self.stormy[1]))
        log.close()

    def stop_clients(self) -> None:
        (self.run / "stop").write_text("stop\n")
        end = time.time() + MAX_LEASE + 60
        while time.time() < end and any(c.alive for c in self.clients.values()):
            time.sleep(0.25)
        self.hung = [c for c in self.clients.values() if c.alive]
        for c in self.hung:
            c.kill9()

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def stop_everything(self, holder: bool = True) -> None:
        if hasattr(self, "monitor"):
            self.monitor.halt.set()
        for c in [*self.clients.values(), *self.past_clients]:
            if c.alive:
                c.kill9()
        for process in self.extra:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        stop_all(self.daemons)
        if holder and self.holder is not None:
            self.holder.stop()

    # --- the checks -------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        """After the clients stopped, with the daemons still up."""
        say = self.say
        results: dict[str, Any] = {}
        settled = self.wait_devices(GRACE + 10, "to be free at the end")
        latest = self.monitor.latest()
        stuck = stuck_leases(list(self.monitor.samples), MAX_LEASE + GRACE)
        if not settled:
            stuck += [f"{d}: {latest.get(d, {}).get('state', 'unknown')}"
                      f" ({latest.get(d, {}).get('health', '?')}) {GRACE + 10:.0f} s after"
                      " every client stopped" for d in self.devices()
                      if not in_service(latest.get(d), set())
                      or latest[d]["state"] != "free"]
        samples = list(self.monitor.samples)
        with open(self.run / "samples.jsonl", "w", encoding="utf-8") as out:
            for t, rows, waiting in samples:  # what the recoveries are computed from
                out.write(json.dumps({"t": t, "devices": rows,
                                      "waiting": sorted(waiting)}) + "\n")
        recoveries: dict[str, list[float]] = {}
        for fault in self.faults:
            if "skipped" in fault:
                continue
            took = recovery(samples, fault)
            fault["recovery"] = took
            if took is not None:
                recoveries.setdefault(fault["kind"], []).append(took)
            elif fault.get("devices"):
                stuck.append(f"{', '.join(fault['devices'])}: never back in service after"
                             f" {fault['kind']} at {fault['at']:.1f}")
            if took is not None and fault.get("devices") and \
                    took > (fault["until"] - fault["at"]) + MAX_LEASE + GRACE:
                stuck.append(f"{', '.join(fault['devices'])}: back in service only"
                             f" {took:.0f} s after {fault['kind']}")
        results["stuck"] = stuck
        results["recoveries"] = recoveries
        # requests
        clients = []
        hung = {id(c) for c in getattr(self, "hung", [])}
        for c in [*self.past_clients, *self.clients.values()]:
            clients.append({"name": c.log.stem, "lines": _lines(c.log),
                            "killed": c.killed, "hung": id(c) in hung})
        self.client_records = clients
        results["waiting_at_end"] = samples[-1][2] if samples else set()
        results["wrong"] = [f"{c['name']}: {x.get('what')} on {x.get('device')}:"
                            f" {x.get('detail')}" for c in clients for x in c["lines"]
                            if x["ev"] == "wrong"]
        results["unexpected"] = [f"{c['name']}: {x.get('type')}: {x.get('msg')}"
                                 for c in clients for x in c["lines"]
                                 if x["ev"] == "unexpected"]
        results["left_live"] = self.leftovers(live=True)
        say("checked the live system; stopping the daemons")
        return results

    def count_lost(self, results: dict[str, Any]) -> None:
        """Requests lost, from the clients' logs and the tracker's records (its audit
        log; its store's history once the daemons stopped, when it has a store)."""
        audit = _lines(self.run / "audit.jsonl")
        restarts = [f["at"] for f in self.faults
                    if f["kind"] == "kill-tracker" and "skipped" not in f]
        history = store_history(str(self.store)) if self.store else {}
        if self.store:
            self.notes.append(f"the tracker's store kept {len(history)} history rows"
                              " with a request id")
        lost, unverifiable = lost_requests(self.client_records, audit, restarts,
                                           results["waiting_at_end"], history)
        results["lost"] = lost
        results["unverifiable"] = unverifiable

    def leftovers(self, live: bool) -> list[str]:
        """Executors, session directories, arenas and cache temp files that belong to no
        live session (with the daemons up: no session is open any more, each board may
        keep one warm spare executor). Waits up to GRACE for them to go."""
        end = time.time() + (GRACE if live else 5.0)
        while True:
            found: list[str] = []
            boards = {b.pid for b in self.boards if b.alive} if live else set()
            everyone = {p for b in self.boards for p in b.pids}
            running = executors(everyone)
            per_board: dict[int, list[int]] = {}
            for pid, parent in running.items():
                per_board.setdefault(parent, []).append(pid)
            for parent, pids in sorted(per_board.items()):
                if parent not in boards:
                    found += [f"executor {p} of the board pid {parent}, which is gone"
                              for p in pids]
                elif len(pids) > 1:
                    found.append(f"{len(pids)} executors of the board pid {parent}"
                                 " (one warm spare expected)")
            found += [f"arena {a}" for a in arenas(self.devices())]
            for board in self.boards:
                found += workdir_leftovers(board.workdir)  # type: ignore[attr-defined]
            if not found or time.time() > end:
                return found
            time.sleep(0.5)

    def report(self, results: dict[str, Any], load: tuple[float, float, float]) -> int:
        options = self.options
        clients = self.client_records
        calm_runs = runs_in(clients, self.calm)
        storm_runs = runs_in(clients, self.stormy)
        calm_min = (self.calm[1] - self.calm[0]) / 60
        storm_min = (self.stormy[1] - self.stormy[0]) / 60
        zero = {
            "boards stuck": results["stuck"],
            "requests lost": results["lost"],
            "wrong answers": results["wrong"],
            "leftovers (daemons up)": results["left_live"],
            "leftovers (daemons stopped)": results["left_stopped"],
        }
        rows = [(name, str(len(items)), "-", "-", "0", "ok" if not items else "MISSED")
                for name, items in zero.items()]
        done = [f for f in self.faults if "skipped" not in f]
        for kind in KINDS:
            tried = [f for f in self.faults if f["kind"] == kind]
            if not tried:
                continue
            ok = [f for f in done if f["kind"] == kind]
            took = results["recoveries"].get(kind, [])
            target, verdict = "-", "-"
            if kind == "kill-tracker":
                target = "<= 10 s"
                verdict = "-" if not took else ("ok" if max(took) <= 10 else "MISSED")
            rows.append((f"recovery after {kind} ({len(ok)}/{len(tried)} done)",
                         summarize(took), "-", "-", target, verdict))
        storm_rate = storm_runs / storm_min if storm_min else 0.0
        calm_rate = calm_runs / calm_min if calm_min else 0.0
        rows.append(("completed runs per minute, faults vs fault-free",
                     f"{storm_rate:.1f}", f"{calm_rate:.1f}",
                     f"{storm_rate / calm_rate:.2f}x" if calm_rate else "-", "-", "-"))
        print()
        print(f"compassd chaos soak: seed {options.seed}, {options.clients} clients,"
              f" {options.phase:g} s fault-free + {storm_min * 60:.0f} s with"
              f" {len(done)} faults ({len(self.faults) - len(done)} skipped),"
              f" {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f}"
              f" {load[2]:.1f} at the start; run directory {self.run}")
        print_table(rows)
        requests = sum(1 for c in clients for x in c["lines"] if x["ev"] == "request")
        granted = sum(1 for c in clients for x in c["lines"] if x["ev"] == "granted")
        print(f"\n{requests} requests, {granted} granted, {calm_runs + storm_runs} runs"
              f" checked in the two phases; {results['unverifiable']} requests of killed"
              " clients had no id yet (not checkable)")
        for note in self.notes:
            print(f"note: {note}")
        errors: dict[str, int] = {}
        for c in clients:
            for x in c["lines"]:
                if x["ev"] in ("op-failed", "release-failed") or (
                        x["ev"] == "request-failed" and x.get("type") != "WaitTimeout"):
                    what = f"{x['ev']} {x.get('op') or ''} {x.get('type')}".replace("  ", " ")
                    errors[what] = errors.get(what, 0) + 1
        if errors:
            print("errors the clients were told (information; each ended its request or"
                  " lease with a reason): " + ", ".join(
                      f"{what} x{count}" for what, count in
                      sorted(errors.items(), key=lambda item: -item[1])))
        for name, items in [*zero.items(), ("unexpected client errors",
                                            results["unexpected"])]:
            for item in items[:20]:
                print(f"{name}: {item}")
            if len(items) > 20:
                print(f"{name}: ... and {len(items) - 20} more")
        idle = []
        if not calm_runs or not storm_runs:
            idle.append(f"runs completed: {calm_runs} fault-free, {storm_runs} with faults")
        if not done:
            idle.append("no fault was injected")
        for why in idle:
            print(f"the soak did not do its work: {why}")
        return 1 if any(zero.values()) or idle else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="the fault schedule's seed")
    parser.add_argument("--minutes", type=float, default=None,
                        help="length of each phase (fault-free, then faults) in minutes")
    parser.add_argument("--clients", type=int, default=16, help="client processes")
    parser.add_argument("--every", type=float, nargs=2, default=(3.0, 6.0),
                        metavar=("MIN", "MAX"), help="seconds between faults")
    parser.add_argument("--max-faults", type=int, default=10_000)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--without", action="append", default=[], choices=KINDS,
                        help="leave out a fault kind (repeatable)")
    parser.add_argument("--tracker-arg", action="append", default=[],
                        help="an extra compass-tracker option (repeatable), e.g."
                        " --tracker-arg=--store=sqlite:PATH")
    parser.add_argument("--short", action="store_true",
                        help="the CI mode: 8 clients, 60 s per phase, a fault every 1-2.5 s")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directory (it is kept anyway on a failure)")
    options = parser.parse_args(argv)
    if options.short:
        options.clients = min(options.clients, 8)
        options.phase = 60.0 if options.minutes is None else options.minutes * 60
        options.every = (1.0, 2.5)
    else:
        options.phase = 60 * (options.minutes if options.minutes is not None else 5.0)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    load = os.getloadavg()
    run = Path(tempfile.mkdtemp(prefix="compass-chaos-"))
    soak = Soak(options, run)
    status = 2

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        soak.prepare()
        soak.say(f"run directory {run}; starting the daemons")
        soak.start()
        soak.soak()
        soak.say("stopping the clients")
        soak.stop_clients()
        results = soak.check()
        soak.stop_everything(holder=False)
        results["left_stopped"] = soak.leftovers(live=False)
        soak.count_lost(results)
        status = soak.report(results, load)
    except KeyboardInterrupt:
        print("chaos: interrupted; stopping everything", file=sys.stderr)
        status = 130
    finally:
        soak.stop_everything()
        if status == 0 and not options.keep:
            shutil.rmtree(run, ignore_errors=True)
        else:
            print(f"chaos: the run directory is kept: {run}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
