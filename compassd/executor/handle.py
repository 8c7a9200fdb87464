"""The board server's side of an executor process: start it, talk to it, watch it die.

L{spawn_executor} starts the executor (C{python -P compassd/executor/_start.py}) with
the AMP channel on the child's fds 3 (it reads) and 4 (it writes); its stdout and stderr
are logged line by line, tagged with the session. L{ExecutorHandle} wraps each command in
a Deferred that fails with L{ExecutorDied} and a sentence such as "the executor died with
signal 11 while running model m.bin" if the process ends before answering.
L{ExecutorPool} keeps a warm spare so opening a session does not wait for Python and the
backend to start.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..protocol.errors import ExecutorDied
from ..protocol.executor import Attach, CheckHealth, Execute, Load, Measure, Ready
from ..protocol.peer import CompassPeer
from .arena import Slot
from .manifest import TensorSpec

log = Logger()

EXIT_RECYCLE = 3  # kept equal to compassd.executor.__main__.EXIT_RECYCLE


def describe_end(reason: Failure) -> str:
    """ "the executor exited with status 1", "the executor died with signal 11"..."""
    value = reason.value
    sig = getattr(value, "signal", None)
    code = getattr(value, "exitCode", None)
    if sig is not None:
        try:
            name = f" ({signal.Signals(sig).name})"
        except ValueError:
            name = ""
        return f"the executor died with signal {sig}{name}"
    if code == EXIT_RECYCLE:
        return (
            f"the executor exited with status {code} to be recycled"
            " (its backend could no longer be used)"
        )
    if code is not None:
        return f"the executor exited with status {code}"
    return "the executor exited"


class _ChildTransport:
    """What AMP writes to: the child's fd 3."""

    disconnecting = False

    def __init__(self, process: Any) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.writeToChild(3, data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def write_descriptor(self) -> Any:
        """The pipe that buffers what is written (for L{CompassPeer.send_now})."""
        return getattr(self._process, "pipes", {}).get(3)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._process.closeChildFD(3)

    def getPeer(self) -> str:
        return "the executor"

    def getHost(self) -> str:
        return "the board server"


class _Channel(CompassPeer):
    """The server's AMP end; the private channel needs no hello."""

    greeted = True
    _peer = "the executor"

    def __init__(self, handle: ExecutorHandle) -> None:
        super().__init__()
        self._handle = handle

    @Ready.responder
    def ready(self, backend: str, info: list[str], pid: int) -> dict[str, Any]:
        self._handle._got_ready(backend, info, pid)
        return {}


class _ExecutorProcess(ProcessProtocol):
    def __init__(self, handle: ExecutorHandle) -> None:
        self._handle = handle
        self._partial: dict[int, bytes] = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.transport.closeChildFD(0)  # type: ignore[union-attr]
        self._handle._channel.makeConnection(_ChildTransport(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 4:
            self._handle._channel.dataReceived(data)
            return
        if childFD in self._partial:
            *lines, self._partial[childFD] = (self._partial[childFD] + data).split(b"\n")
            for line in lines:
                self._handle._log_line(childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        rest = self._partial.get(childFD)
        if rest:
            self._partial[childFD] = b""
            self._handle._log_line(childFD, rest)

    def processEnded(self, reason: Failure) -> None:
        for fd in (1, 2):
            self.childConnectionLost(fd)
        self._handle._process_ended(reason)


class ExecutorHandle:
    """One executor process seen from the server.

    Attributes: C{pid}, C{tag} (prefix of its log lines; change it when a spare is handed
    to a session), C{backend}, C{info} (from L{Ready}), C{ready} (a Deferred firing with
    the info lines, or failing with L{ExecutorDied}), C{ended} (a Deferred firing with
    the sentence saying how the process ended; it never fails), C{end_reason}.

    Every command method returns a Deferred. If the process ends before the answer, it
    fails with L{ExecutorDied} whose message is the end sentence plus what was going on
    ("while running model m"). A C{timeout} (seconds) on a call kills the process
    (SIGKILL) when it passes; the call then fails with an L{ExecutorDied} that says so.
    """

    def __init__(self, reactor: Any, backend: str, tag: str = "") -> None:
        self._reactor = reactor
        self.backend = backend
        self.tag = tag
        self.pid: int | None = None
        self.info: list[str] = []
        self.ended: Deferred[str] = Deferred()
        self._ready_outcome: Any = None  # the info list, or a Failure
        self._ready_waiters: list[Deferred[list[str]]] = []
        self.end_reason: str | None = None
        self._channel = _Channel(self)
        self._pending: dict[Deferred[Any], str] = {}
        self._kill_note = ""
        self._process: Any = None
        self._last_words: deque[str] = deque(maxlen=1)
        """The last line the process wrote to stderr (a traceback's last line says why)."""

    # --- state ------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.end_reason is None

    def __repr__(self) -> str:
        return f"<ExecutorHandle {self.backend} pid={self.pid} tag={self.tag!r}>"

    def _got_ready(self, backend: str, info: list[str], pid: int) -> None:
        self.info = list(info)
        self._settle_ready(self.info)

    def _settle_ready(self, outcome: Any) -> None:
        if self._ready_outcome is not None:
            return
        self._ready_outcome = outcome
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    @property
    def ready(self) -> Deferred[list[str]]:
        """Fires with the Ready info lines, or fails with L{ExecutorDied} if the process
        ended first. Each use gives a new Deferred, so an executor nobody waits for (a
        spare killed at stop) leaves no unhandled failure behind."""
        return self.when_ready()

    def when_ready(self) -> Deferred[list[str]]:
        """A new Deferred that fires like C{ready}."""
        d: Deferred[list[str]] = Deferred()
        if self._ready_outcome is None:
            self._ready_waiters.append(d)
        elif isinstance(self._ready_outcome, Failure):
            d.errback(self._ready_outcome)
        else:
            d.callback(self._ready_outcome)
        return d

    def _log_line(self, fd: int, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if fd == 2 and text.strip():
            self._last_words.append(text.strip())
        log.info(
            "[{tag}] executor {pid} {stream}: {line}",
            tag=self.tag,
            pid=self.pid,
            stream="stdout" if fd == 1 else "stderr",
            line=text,
            executor_tag=self.tag,
            executor_stream=fd,
            executor_line=text,
        )

    def _process_ended(self, reason: Failure) -> None:
        description = describe_end(reason)
        if self._kill_note:
            description = f"{description} {self._kill_note}"
        self.end_reason = description
        log.info("[{tag}] {description}", tag=self.tag, description=description)
        pending, self._pending = self._pending, {}
        for d, doing in pending.items():
            said = description if doing in description else f"{description}{doing}"
            d.errback(ExecutorDied(f"{_capital(said)}."))
        said = f"; its last words: {self._last_words[-1]}" if self._last_words else ""
        self._settle_ready(Failure(ExecutorDied(
            f"{_capital(description)} before it was ready{said}.")))
        self._channel.connectionLost(Failure(ierror.ConnectionDone(description)))
        self.ended.callback(description)

    # --- commands ---------------------------------------------------------------

    def _call(
        self, command: type[amp.Command], doing: str, timeout: float | None, **kw: Any
    ) -> Deferred[Any]:
        if not self.alive:
            raise_now: Deferred[Any] = Deferred()
            raise_now.errback(ExecutorDied(f"{_capital(self.end_reason or '')}; start a new one."))
            return raise_now
        outer: Deferred[Any] = Deferred()
        self._pending[outer] = doing
        timer = None
        if timeout is not None:
            timer = self._reactor.callLater(timeout, self._timed_out, doing, timeout)

        def settle(result: Any, ok: bool) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if self._pending.pop(outer, None) is None:
                return  # already failed by the process ending
            if ok:
                outer.callback(result)
            else:
                outer.errback(result)

        self._channel.callRemote(command, **kw).addCallbacks(
            settle, settle, callbackArgs=(True,), errbackArgs=(False,)
        )
        return outer

    def _timed_out(self, doing: str, timeout: float) -> None:
        self._kill_note = f"because it took longer than {timeout:g} s{doing}"
        self.kill()

    def attach(
        self, workdir: str, arena: str, arena_size: int, session: str = ""
    ) -> Deferred[None]:
        """Work in C{workdir}; map the arena file C{arena} (relative to it, or absolute)."""
        d = self._call(
            Attach,
            " while attaching to its session",
            None,
            workdir=workdir,
            arena=arena,
            arena_size=arena_size,
            session=session,
        )
        return d.addCallback(lambda _: None)

    def load(
        self, path: str, manifest: str | None = None, timeout: float | None = None
    ) -> Deferred[tuple[str, list[TensorSpec], list[TensorSpec]]]:
        """Load C{path} (relative to the session directory); fires with (model, inputs,
        outputs). C{manifest}: a file in the session directory, or JSON text."""
        kw: dict[str, Any] = {"path": path}
        if manifest is not None:
            kw["manifest"] = manifest
        d = self._call(Load, f" while loading model {path}", timeout, **kw)
        return d.addCallback(
            lambda r: (
                r["model"],
                [TensorSpec(s["name"], s["dtype"], s["shape"]) for s in r["inputs"]],
                [TensorSpec(s["name"], s["dtype"], s["shape"]) for s in r["outputs"]],
            )
        )

    def execute(
        self,
        model: str,
        inputs: Sequence[Slot],
        out_offset: int,
        out_capacity: int,
        timeout: float | None = None,
    ) -> Deferred[tuple[list[Slot], float]]:
        """Run C{model} on input slots; fires with (output slots, seconds on the backend)."""
        d = self._call(
            Execute,
            f" while running model {model}",
            timeout,
            model=model,
            inputs=[s.to_amp() for s in inputs],
            out_offset=out_offset,
            out_capacity=out_capacity,
        )
        return d.addCallback(
            lambda r: ([Slot.from_amp(s) for s in r["outputs"]], float(r["seconds"]))
        )

    def measure(
        self,
        model: str,
        inputs: Sequence[Slot],
        number: int,
        repeat: int,
        warmup: int = 1,
        timeout: float | None = None,
    ) -> Deferred[list[float]]:
        """Benchmark C{model}; fires with C{repeat} figures of seconds per run."""
        d = self._call(
            Measure,
            f" while benchmarking model {model}",
            timeout,
            model=model,
            inputs=[s.to_amp() for s in inputs],
            number=number,
            repeat=repeat,
            warmup=warmup,
        )
        return d.addCallback(lambda r: list(r["times"]))

    def check_health(self, timeout: float | None = None) -> Deferred[tuple[bool, str]]:
        """Fires with (healthy, detail)."""
        d = self._call(CheckHealth, " while checking its health", timeout)
        return d.addCallback(lambda r: (bool(r["healthy"]), r["detail"]))

    # --- ending -----------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the process by its PID (nothing if it already ended)."""
        if self.alive and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> Deferred[str]:
        """Close the channel (the executor exits by itself); fires like C{ended}."""
        if self.alive and self._process is not None:
            self._process.closeChildFD(3)
        return self.ended


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


_START = Path(__file__).resolve().parent / "_start.py"


def executor_argv(
    backend: str,
    driver: str | None = None,
    job_timeout_ms: int | None = None,
    parent: int | None = None,
    memory_limit: int | None = None,
) -> list[str]:
    """The command line that starts an executor: this Python runs the executor of this
    copy of compassd (C{_start.py} by its path, with C{-P}), never a C{compassd} that
    happens to be in the current directory. With C{parent} (a pid), the executor dies
    with that process (L{compassd.lifeline}), which C{_start.py} sees to before it
    loads anything heavy."""
    argv = [sys.executable, "-P", str(_START), "--backend", backend]
    if parent is not None:
        argv += ["--parent", str(parent)]
    if driver is not None:
        argv += ["--driver", driver]
    if job_timeout_ms is not None:
        argv += ["--job-timeout-ms", str(job_timeout_ms)]
    if memory_limit is not None:
        argv += ["--memory-limit", str(memory_limit)]
    return argv


READY_TIMEOUT = 60.0
"""Seconds an executor may take to load its backend before it is killed."""


def spawn_executor(
    reactor: Any,
    backend: str,
    driver: str | None = None,
    tag: str = "",
    *,
    job_timeout_ms: int | None = None,
    env: Mapping[str, str] | None = None,
    path: str | None = None,
    ready_timeout: float | None = READY_TIMEOUT,
    memory_limit: int | None = None,
) -> ExecutorHandle:
    """Start an executor process; the handle's C{ready} fires once its backend is loaded.

    C{env} defaults to this process's environment; C{path} is its starting directory.
    An executor not ready within C{ready_timeout} seconds (a driver that hangs while it
    opens the device) is killed, and C{ready} fails saying so. The executor dies with
    this process (C{--parent}, L{compassd.lifeline}). With C{memory_limit} (bytes of
    address space, RLIMIT_AS) an allocation past it fails inside the executor, which
    answers L{LimitExceeded} saying so and keeps serving.
    """
    handle = ExecutorHandle(reactor, backend, tag)
    protocol = _ExecutorProcess(handle)
    argv = executor_argv(backend, driver, job_timeout_ms, parent=os.getpid(),
                         memory_limit=memory_limit)
    process = reactor.spawnProcess(
        protocol,
        argv[0],
        argv,
        env=dict(os.environ if env is None else env),
        path=path,
        childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
    )
    handle._process = process
    handle.pid = process.pid
    if ready_timeout is not None:
        def not_ready() -> None:
            if handle._ready_outcome is None and handle.alive:
                handle._kill_note = (f"because its backend was not ready within"
                                     f" {ready_timeout:g} s")
                handle.kill()

        timer = reactor.callLater(ready_timeout, not_ready)
        handle.when_ready().addBoth(lambda _: timer.cancel() if timer.active() else None)
    return handle


class ExecutorPool:
    """Keeps one warm spare executor; L{take} hands it out and starts the next.

    C{spawn} is called as C{spawn(tag)} and returns an L{ExecutorHandle}; by default it
    calls L{spawn_executor} with this pool's backend and driver.
    """

    def __init__(
        self,
        reactor: Any,
        backend: str,
        driver: str | None = None,
        *,
        spawn: Callable[[str], ExecutorHandle] | None = None,
        **spawn_options: Any,
    ) -> None:
        self._reactor = reactor
        self._spawn = spawn or (
            lambda tag: spawn_executor(reactor, backend, driver, tag, **spawn_options)
        )
        self.spare: ExecutorHandle | None = None
        self.running = False

    def start(self) -> None:
        """Start keeping a spare."""
        self.running = True
        self._refill()

    def _refill(self) -> None:
        if self.running and (self.spare is None or not self.spare.alive):
            spare = self.spare = self._spawn("spare")
            spare.when_ready().addErrback(
                lambda f: log.warn("A spare executor failed: {e}", e=f.value)
            )
            spare.ended.addCallback(self._spare_ended, spare)

    def _spare_ended(self, why: str, spare: ExecutorHandle) -> str:
        if self.spare is spare:
            self.spare = None
        return why

    def take(self, tag: str) -> Deferred[ExecutorHandle]:
        """An executor for a session, ready to attach (the spare, or a new one)."""
        handle = self.spare if self.spare is not None and self.spare.alive else None
        if handle is None:
            handle = self._spawn(tag)
        self.spare = None
        handle.tag = tag
        self._refill()
        return handle.when_ready().addCallback(lambda _: handle)

    def stop(self) -> Deferred[None]:
        """Stop keeping a spare and end the current one."""
        self.running = False
        spare, self.spare = self.spare, None
        if spare is None or not spare.alive:
            return succeed(None)
        spare.kill()
        return spare.ended.addCallback(lambda _: None)
