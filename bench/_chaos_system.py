"""The live system bench/chaos.py runs: the daemons, their restarts, the machine's view.

Every daemon is ``twistd -n compass-...`` on a port chosen once, so a restart (after a
kill -9, as systemd's ``Restart=always`` would) binds the same address; its log (stdout
and stderr) is appended to one file across restarts. Each process runs in its own
session, so a Ctrl-C reaches bench/chaos.py alone, which stops everything by PID.

One board's work directory can be a small tmpfs that a fault fills up: the tmpfs is
mounted in a mount namespace held by a ``sleep`` process (``unshare``; a user namespace
first, as an unprivileged user may make one), and the board runs inside it
(``nsenter``), so it outlives the board's restarts and is reached from here through
``/proc/HOLDER/root``. Where no namespace can be made, that board's work directory is
made read-only instead (which root ignores, so the fault is then reported unavailable).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_TWISTD = "from twisted.scripts.twistd import run; run()"
EXECUTOR_MARK = "compassd/executor/_start.py"


def die_with_us() -> None:
    """In a child between fork and exec: SIGTERM it when bench/chaos.py dies, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG), so nothing it started outlives it."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for name in ("COMPASS_TRACKER", "COMPASS_TOKEN"):
        env.pop(name, None)
    return env


class Daemon:
    """One daemon of the soak: how to start it, its current process, its past pids."""

    def __init__(self, name: str, plugin: str, args: list[str], log: Path,
                 port: int | None, prefix: list[str] | None = None) -> None:
        self.name = name
        self.plugin = plugin
        self.args = args
        self.log = log
        self.port = port
        self.prefix = prefix or []
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.starts = 0
        self.stopped = False  # by SIGSTOP

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, deadline: float = 90.0) -> None:
        """Start it; return once it logs that it listens on its port (a board behind
        the proxy listens on nothing: it returns at once)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        command = [*self.prefix, sys.executable, "-c", _TWISTD, "-n", "--pidfile=",
                   "--logfile=-", self.plugin, *self.args]
        with open(self.log, "ab") as out:
            out.write(f"--- chaos: start #{self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                command, cwd=str(self.log.parent), env=environment(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_us)
        self.pids.append(self.process.pid)
        self.starts += 1
        self.stopped = False
        if self.port is None:
            return
        wanted = re.compile(rf"listening on tcp 127\.0\.0\.1:{self.port}\b".encode())
        end = time.monotonic() + deadline
        while True:
            with open(self.log, "rb") as f:
                f.seek(offset)
                if wanted.search(f.read()):
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}"
                                   f" before listening; see {self.log}")
            if time.monotonic() > end:
                raise RuntimeError(f"{self.name} did not listen on {self.port} within"
                                   f" {deadline:g} s; see {self.log}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.process is not None
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def kill9(self) -> None:
        """SIGKILL it and reap it."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGCONT (it may be stopped), SIGTERM, then SIGKILL after C{timeout}."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=timeout)
        return self.process.returncode


class Holder:
    """A mount namespace holding a small tmpfs at C{path}, kept by a sleeping process."""

    def __init__(self, path: Path, size_mib: int) -> None:
        self.path = path
        self.size_mib = size_mib
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Make it; False when no namespace can be made here."""
        self.path.mkdir(parents=True, exist_ok=True)
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            return False
        script = (f'mount -t tmpfs -o size={self.size_mib}m,mode=0700 chaos "$0"'
                  ' && echo mounted && exec sleep 100000')
        for flags in (["-Urm"], ["-m"]):
            process = subprocess.Popen(
                ["unshare", *flags, "--propagation", "private", "sh", "-c", script,
                 str(self.path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=die_with_us)
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() == b"mounted":
                self.process = process
                self.flags = flags
                return True
            process.kill()
            process.wait()
        return False

    def prefix(self) -> list[str]:
        assert self.process is not None
        user = ["--user", "--preserve-credentials"] if "-Urm" in self.flags else []
        return ["nsenter", "--target", str(self.process.pid), *user, "--mount"]

    @property
    def inside(self) -> Path:
        """The tmpfs as seen from here."""
        assert self.process is not None
        return Path(f"/proc/{self.process.pid}/root") / str(self.path).lstrip("/")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# --- what the machine shows -----------------------------------------------------------


def executors(parents: set[int]) -> dict[int, int]:
    """Executor processes (pid -> the board pid named by its --parent) of these boards."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode("utf-8", "replace") for a in argv]
        if not any(w.endswith(EXECUTOR_MARK) for w in words) or "--parent" not in words:
            continue
        try:
            parent = int(words[words.index("--parent") + 1])
        except (IndexError, ValueError):
            continue
        if parent in parents and _running(int(entry)):
            found[int(entry)] = parent
    return found


def _running(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2:][:1] not in ("Z", "X")


def arenas(devices: list[str]) -> list[str]:
    """Tensor arenas in /dev/shm of these devices."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return sorted(str(p) for d in devices for p in shm.glob(f"compass-arena-{d}-*"))


def workdir_leftovers(workdir: Path) -> list[str]:
    """Session directories, and files in the model cache that are not entries (a SHA-256
    name), in a board's work directory."""
    found: list[str] = []
    try:
        names = sorted(os.listdir(workdir))
    except OSError:
        return found
    for name in names:
        if name.startswith("session-"):
            found.append(str(workdir / name))
    cache = workdir / "cache"
    try:
        entries = sorted(os.listdir(cache))
    except OSError:
        entries = []
    for name in entries:
        if not re.fullmatch(r"[0-9a-f]{64}", name):
            found.append(str(cache / name))
    return found


def stop_all(daemons: list[Any]) -> None:
    """Stop in reverse order of start; nothing raised."""
    for daemon in reversed(daemons):
        try:
            daemon.stop()
        except Exception as e:  # keep stopping the others
            print(f"chaos: could not stop {getattr(daemon, 'name', daemon)}: {e}",
                  file=sys.stderr)
