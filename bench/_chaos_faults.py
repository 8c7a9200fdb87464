"""The faults bench/chaos.py injects, one function per kind, each bounded in time.

A fault returns what it did as a dict: ``kind``, ``target``, ``at`` (when it struck),
``until`` (when the disturbance ended: the restart done, SIGCONT sent, the disk freed),
``devices`` (the devices it should take out of service for a while), and ``skipped``
(why it could not be done, e.g. no client was uploading) when it was not done.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _chaos_system import Daemon, die_with_us, executors

KINDS = (
    "kill-executor", "kill-board", "kill-proxy", "kill-tracker", "stop-board",
    "kill-client-upload", "kill-client-run", "kill-client-queued", "corrupt-frame",
    "truncated-frame", "driver-hang", "driver-crash", "disk-full",
)
RESTART_SEC = 0.5
"""What systemd's RestartSec= would wait before starting a killed daemon again."""


class Injector:
    """Knows the system (C{soak}: bench/chaos.py's L{Soak}) and does one fault at a time."""

    def __init__(self, soak: Any, rng: random.Random) -> None:
        self.soak = soak
        self.rng = rng
        self.actors = 0

    def do(self, kind: str) -> dict[str, Any]:
        method = getattr(self, "_" + kind.replace("-", "_"))
        at = time.time()
        try:
            result: dict[str, Any] = method()
        except Exception as e:  # a fault that fails is reported, the soak goes on
            result = {"skipped": f"the injector failed: {type(e).__name__}: {e}"}
        result.setdefault("at", at)
        result.setdefault("until", result["at"])
        result.setdefault("devices", [])
        result["kind"] = kind
        result["done"] = time.time()
        return result

    # --- daemons ------------------------------------------------------------------

    def _board(self, busy_first: bool = False) -> Daemon:
        boards = [b for b in self.soak.boards if b.alive]
        if busy_first:
            busy = [b for b in boards if self.soak.monitor.state(b.device) == "busy"]
            boards = busy or boards
        return boards[self.rng.randrange(len(boards))]

    def _restart(self, daemon: Daemon) -> dict[str, Any]:
        at = time.time()
        daemon.kill9()
        for attempt in range(3):  # Restart=always: again, until it is up
            time.sleep(RESTART_SEC)
            try:
                daemon.start()
                break
            except RuntimeError:
                daemon.kill9()
                if attempt == 2:
                    raise
        return {"at": at, "until": time.time(), "target": daemon.name}

    def _kill_executor(self) -> dict[str, Any]:
        board = self._board(busy_first=True)
        found = sorted(executors({board.pid} if board.pid else set()))
        if not found:
            return {"skipped": f"{board.name} has no executor", "target": board.name}
        pid = found[self.rng.randrange(len(found))]
        at = time.time()
        os.kill(pid, signal.SIGKILL)
        return {"at": at, "target": f"{board.name} executor {pid}",
                "devices": [board.device]}

    def _kill_board(self) -> dict[str, Any]:
        board = self._board()
        return {**self._restart(board), "devices": [board.device]}

    def _kill_proxy(self) -> dict[str, Any]:
        return {**self._restart(self.soak.proxy),
                "devices": [b.device for b in self.soak.boards if b.proxied]}

    def _kill_tracker(self) -> dict[str, Any]:
        return {**self._restart(self.soak.tracker),
                "devices": [b.device for b in self.soak.boards]}

    def _stop_board(self) -> dict[str, Any]:
        board = self._board()
        at = time.time()
        board.signal(signal.SIGSTOP)
        board.stopped = True
        time.sleep(self.soak.heartbeat_timeout + 2.0)
        board.signal(signal.SIGCONT)
        board.stopped = False
        return {"at": at, "until": time.time(), "target": board.name,
                "devices": [board.device]}

    # --- clients --------------------------------------------------------------------

    def _kill_client(self, phases: tuple[str, ...]) -> dict[str, Any]:
        end = time.time() + 10.0
        while time.time() < end:
            slots = []
            for slot, client in self.soak.clients.items():
                state = client.state()
                if client.alive and state.get("phase") in phases:
                    slots.append((slot, state))
            if slots:
                slot, state = slots[self.rng.randrange(len(slots))]
                client = self.soak.clients[slot]
                at = time.time()
                client.kill9()
                self.soak.restart_client(slot)
                device = state.get("device")
                return {"at": at, "target": f"client {slot} pid {client.pid}"
                        f" ({state.get('phase')})", "devices": [device] if device else [],
                        "request": state.get("request"), "lease": state.get("lease"),
                        "client": client.log.name}
            time.sleep(0.05)
        return {"skipped": f"no client was in {'/'.join(phases)} for 10 s"}

    def _kill_client_upload(self) -> dict[str, Any]:
        return self._kill_client(("upload",))

    def _kill_client_run(self) -> dict[str, Any]:
        return self._kill_client(("run", "benchmark"))

    def _kill_client_queued(self) -> dict[str, Any]:
        return self._kill_client(("queued",))

    # --- actors: a lease used to do one bad thing -------------------------------------

    def _actor(self, kind: str) -> dict[str, Any]:
        self.actors += 1
        number = self.actors
        soak = self.soak
        command = [sys.executable, str(Path(__file__).with_name("_chaos_client.py")),
                   str(soak.config_path), "actor", kind, str(number)]
        process = subprocess.Popen(command, cwd=str(soak.run), stdin=subprocess.DEVNULL,
                                   stdout=open(soak.run / f"actor-{number}.out", "ab"),
                                   stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_us)
        soak.extra.append(process)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            return {"skipped": f"actor {number} ({kind}) did not finish in 60 s",
                    "hung_actor": number}
        lines = _lines(soak.run / f"actor-{number}.log")
        fault = next((x for x in lines if x["ev"] == "fault"), None)
        result = next((x for x in lines if x["ev"] == "result"), None)
        granted = next((x for x in lines if x["ev"] == "granted"), None)
        if fault is None or granted is None:
            why = next((x.get("msg") for x in lines if "msg" in x), "no lease")
            return {"skipped": f"actor {number}: {why}"}
        released = next((x for x in lines if x["ev"] == "released"), None)
        return {"at": fault["t"], "until": released["t"] if released else fault["t"],
                "target": f"{granted['device']} (actor {number})",
                "devices": [granted["device"]], "lease": granted["lease"],
                "outcome": result and {k: result.get(k)
                                       for k in ("outcome", "type", "msg", "message")}}

    def _raw_junk(self) -> None:
        """Junk on fresh connections to the tracker and the proxy: each must drop that
        connection and keep serving everyone else."""
        for port in (self.soak.tracker.port, self.soak.proxy.port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(self.rng.randbytes(self.rng.randint(1, 300)))
            except OSError:
                pass

    def _corrupt_frame(self) -> dict[str, Any]:
        self._raw_junk()
        return self._actor("corrupt")

    def _truncated_frame(self) -> dict[str, Any]:
        return self._actor("truncate")

    def _driver_hang(self) -> dict[str, Any]:
        return self._actor("hang")

    def _driver_crash(self) -> dict[str, Any]:
        return self._actor("crash")

    # --- the disk -------------------------------------------------------------------

    def _disk_full(self) -> dict[str, Any]:
        holder = self.soak.holder
        board = self.soak.disk_board
        if holder is None:
            return {"skipped": "no tmpfs could be made here (no mount namespace)"}
        filler = holder.inside / "chaos-filler"
        at = time.time()
        try:
            stats = os.statvfs(holder.inside)
            size = max(0, stats.f_bavail * stats.f_frsize - (256 << 10))
            with open(filler, "wb") as f:
                chunk = b"\0" * (1 << 20)
                while size > 0:
                    f.write(chunk[:min(size, len(chunk))])
                    size -= len(chunk)
        except OSError:
            pass  # full: that was the point
        time.sleep(6.0)
        try:
            filler.unlink()
        except OSError:
            pass
        return {"at": at, "until": time.time(), "target": board.name,
                "devices": [board.device]}


def _lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by SIGKILL
    return out
