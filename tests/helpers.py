"""Start and stop real compassd daemons (``twistd PLUGIN``) for end-to-end tests.

The daemon runs in the foreground (``-n``) with its log on stdout; it is ready when it logs
``... listening on tcp 127.0.0.1:PORT``. ``python -m twisted`` runs ``twist``, not
``twistd`` (on Twisted 22.4 as on newer ones), so the twistd entry point is called
through ``-c``.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compassd.demo.daemons import Daemon, DaemonError, _terminate, child_environment

ROOT = Path(__file__).resolve().parent.parent


class DaemonFailed(Exception):
    """The daemon exited, or did not say it was listening, before the deadline."""


def daemon_env() -> dict[str, str]:
    """The environment for a child process that must import compassd from this tree."""
    return child_environment()


def start_twistd(
    plugin: str, *args: str, deadline: float = 20.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``twistd -n PLUGIN --listen tcp:0:interface=127.0.0.1 ARGS`` (with
    L{compassd.demo.daemons.Daemon}, from the repository root); return the process and
    the port it bound, once it has logged that it listens.

    Raises L{DaemonFailed} with the log so far if it exits or stays silent for
    C{deadline} seconds; the process is stopped in that case.
    """
    try:
        daemon = Daemon.start(plugin, *args, deadline=deadline, cwd=str(ROOT))
    except DaemonError as e:
        raise DaemonFailed(str(e)) from e
    daemon.process.compass_daemon = daemon  # type: ignore[attr-defined]
    return daemon.process, daemon.port


def daemon_log(proc: subprocess.Popen[bytes]) -> str:
    """What the daemon has logged so far."""
    daemon = getattr(proc, "compass_daemon", None)
    if daemon is not None:
        return str(daemon.log)
    return b"".join(getattr(proc, "compass_log", [])).decode("utf-8", "replace")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop C{proc} by its PID (SIGTERM, then SIGKILL after C{timeout}); return its
    exit status."""
    daemon = getattr(proc, "compass_daemon", None)
    if daemon is not None:
        return int(daemon.stop(timeout))
    status = _terminate(proc, timeout)
    reader = getattr(proc, "compass_reader", None)
    if reader is not None:
        reader.join(timeout)  # the pipe ends with the process: take the last lines
    if proc.stdout is not None and (reader is None or not reader.is_alive()):
        proc.stdout.close()
    return status


def _drain(proc: subprocess.Popen[bytes], start: bytes) -> None:
    """Keep reading the log of a daemon started by hand (in a network namespace) so a
    full pipe never blocks it; the lines so far are in C{proc.compass_log}."""
    chunks = [start]
    proc.compass_log = chunks  # type: ignore[attr-defined]
    stream = proc.stdout
    assert stream is not None

    def read() -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            chunks.append(chunk)

    reader = threading.Thread(target=read, name=f"log of pid {proc.pid}", daemon=True)
    proc.compass_reader = reader  # type: ignore[attr-defined]
    reader.start()


def wait_logged(proc: subprocess.Popen[bytes], text: str, deadline: float = 20.0) -> None:
    """Wait (at most C{deadline} seconds) until the daemon has logged C{text}, e.g. that
    a second listener is bound: L{start_twistd} returns once the first one is."""
    import time

    end = time.monotonic() + deadline
    while text not in daemon_log(proc):
        if time.monotonic() > end or proc.poll() is not None:
            raise DaemonFailed(f"the daemon did not log {text!r} within {deadline:g} s;"
                               f" its log:\n{daemon_log(proc)}")
        time.sleep(0.02)


def free_port() -> int:
    """A loopback port that was just bound and closed: nothing listens on it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def registered_board(
    address: tuple[str, int], device: str = "npu-1", key: str = "npu-x2",
    where: str = "10.0.0.5:9091", info: tuple[str, ...] = ("target=X2_1204",),
    token: str | None = None, deadline: float = 10.0,
) -> Iterator[Any]:
    """A board connection to the tracker at C{address} that has registered C{device} in
    C{key}; it closes (and the device goes offline) when the block ends.

    It is an L{AsyncTracker} connected with the board role, driven through the blocking
    client's private reactor. It sends no heartbeats: start the tracker with a long
    --heartbeat-timeout when a test may outlast the default 15 s.
    """
    from compassd.client import AsyncTracker, _reactor
    from compassd.protocol import board_tracker as bt

    host, port = address
    connection = _reactor.call(
        lambda: AsyncTracker.connect(_reactor.reactor(), host, port, role="board",
                                     user="rack", token=token, timeout=deadline),
        timeout=deadline,
    )
    try:
        _reactor.call(connection.call, bt.Register, device=device, key=key, address=where,
                      info=list(info), timeout=deadline)
        yield connection
    finally:
        _reactor.call(connection.close, timeout=deadline)


def until(what: str, check: Callable[[], Any], deadline: float = 30.0) -> Any:
    """Poll C{check} until it returns something true, or fail after C{deadline} s."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {deadline:g} s")
        time.sleep(0.05)
