"""Start compassd daemons as child processes on loopback, and stop them by PID.

Each daemon is ``twistd -n PLUGIN`` run by this Python (``python -m twisted`` runs
``twist``, not ``twistd``, so the twistd entry point is called through ``-c``), listening
on ``tcp:0:interface=127.0.0.1``: the kernel picks a free port and the daemon's log line
``... listening on tcp 127.0.0.1:PORT`` says which. The log is read on a thread, so a full
pipe never blocks the daemon, and kept for error messages.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_LISTENING = re.compile(rb"listening on tcp 127\.0\.0\.1:(\d+)")
_TWISTD = "from twisted.scripts.twistd import run; run()"


class DaemonError(Exception):
    """A daemon did not start, or did not stop; the message says which and why."""


def child_environment() -> dict[str, str]:
    """This environment, with the folder that holds the compassd package (and the
    ``twisted/plugins`` dropin next to it) first on PYTHONPATH, and without the
    variables that would point the children at another tracker."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for name in ("COMPASS_TRACKER", "COMPASS_TOKEN"):
        env.pop(name, None)
    return env


class Daemon:
    """One running ``twistd PLUGIN``: its C{process}, C{pid} and the C{port} it bound."""

    state_dir: str | None = None
    """A tracker started without --store keeps its state here; removed at L{stop}."""

    def __init__(self, plugin: str, process: subprocess.Popen[bytes], port: int,
                 log: list[bytes], reader: threading.Thread) -> None:
        self.plugin = plugin
        self.process = process
        self.pid = process.pid
        self.port = port
        self._log = log
        self._reader = reader

    @property
    def log(self) -> str:
        """What the daemon has logged so far."""
        return b"".join(self._log).decode("utf-8", "replace")

    @classmethod
    def start(cls, plugin: str, *args: str, deadline: float = 30.0,
              cwd: str | None = None) -> Daemon:
        """Start ``twistd -n PLUGIN --listen tcp:0:interface=127.0.0.1 ARGS`` and return
        once it logs its port. L{DaemonError} (with its log) if it exits or stays silent
        for C{deadline} seconds; it is stopped in that case. A compass-tracker started
        without --store gets a store of its own in a temporary directory (never the
        machine's state directory)."""
        state_dir = None
        if plugin == "compass-tracker" and not any(a.startswith("--store") for a in args):
            state_dir = tempfile.mkdtemp(prefix="compass-tracker-state-")
            args = (*args, "--store", os.path.join(state_dir, "tracker.sqlite"))
        command = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile=-", plugin,
                   "--listen", "tcp:0:interface=127.0.0.1", *args]
        try:
            process = subprocess.Popen(
                command, cwd=cwd, env=child_environment(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as e:
            raise DaemonError(f"Cannot start twistd {plugin}: {e.strerror or e}.") from e
        assert process.stdout is not None
        fd = process.stdout.fileno()
        chunks: list[bytes] = []
        end = time.monotonic() + deadline
        try:
            while True:
                found = _LISTENING.search(b"".join(chunks))
                if found:
                    break
                left = end - time.monotonic()
                if left <= 0:
                    raise DaemonError(
                        f"twistd {plugin} did not start listening within {deadline:g} s;"
                        " its log:\n" + b"".join(chunks).decode("utf-8", "replace"))
                readable, _, _ = select.select([fd], [], [], left)
                if not readable:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    process.wait(timeout=5)
                    raise DaemonError(
                        f"twistd {plugin} exited with status {process.returncode} before"
                        " listening; its log:\n"
                        + b"".join(chunks).decode("utf-8", "replace"))
                chunks.append(chunk)
        except BaseException:
            _terminate(process, 5.0)
            if state_dir is not None:
                shutil.rmtree(state_dir, ignore_errors=True)
            raise
        stream: Any = process.stdout  # a BufferedReader: read1 returns what is there

        def read() -> None:
            for chunk in iter(lambda: stream.read1(65536), b""):
                chunks.append(chunk)

        reader = threading.Thread(target=read, name=f"log of twistd {plugin}", daemon=True)
        reader.start()
        daemon = cls(plugin, process, int(found.group(1)), chunks, reader)
        daemon.state_dir = state_dir
        return daemon

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """Stop it by its PID: SIGTERM, then SIGKILL after C{timeout} seconds. Returns its
        exit status (negative: the signal that ended it)."""
        status = _terminate(self.process, timeout)
        self.remove_state()
        self._reader.join(timeout)
        if not self._reader.is_alive() and self.process.stdout is not None:
            self.process.stdout.close()
        return status


    def remove_state(self) -> None:
        """Remove the temporary store of a stopped tracker started without --store."""
        if self.state_dir is not None and self.process.poll() is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
    return process.returncode
