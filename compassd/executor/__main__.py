"""The executor process: ``python -m compassd.executor --backend aipu|onnx [--driver PATH]``.

A board server starts one per session (and one warm spare); see ``docs/executor.md``. It
loads the backend, then speaks AMP (L{compassd.protocol.executor}) on file descriptor 3
(commands in) and 4 (answers out). Its stdout and stderr belong to the server's log: the
NPU driver prints there. It exits when the server closes fd 3, and on its own (status
L{EXIT_RECYCLE}) after a driver timeout, which leaves a job that must never be cleaned.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.protocol import connectionDone
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure

from ..lifeline import ParentWatch, die_with_parent
from ..protocol.errors import (
    BadRequest,
    LimitExceeded,
    ModelRejected,
    NoSuchFile,
    PathRefused,
    RunFailed,
)
from ..protocol.executor import Attach, CheckHealth, Execute, Load, Measure, Ready
from ..protocol.peer import CompassPeer
from ..tensors import parse_dtype
from .arena import Arena, ArenaFull, Slot, align_up
from .arena_space import ArenaSpace, OutOfSharedMemory
from .backends import Backend, BackendPoisoned, make_backend
from .manifest import Manifest, ManifestError, TensorSpec, load_manifest, parse_manifest

COMMAND_FD = 3
"""The executor reads AMP boxes from this descriptor."""
ANSWER_FD = 4
"""The executor writes AMP boxes to this descriptor."""
EXIT_RECYCLE = 3
"""Exit status after the backend was poisoned (a driver job timed out)."""

T = TypeVar("T")

try:
    _libc: Any = ctypes.CDLL(None)
except OSError:  # pragma: no cover
    _libc = None


def flush_c_stdio() -> None:
    """Flush C stdio buffers: the driver's printf output reaches the log now, not at exit."""
    if _libc is not None:
        _libc.fflush(None)


class ExecutorServer(CompassPeer):
    """The executor's side of the channel: serves the server's commands with a backend.

    The channel is private (two pipes the server made), so there is no hello exchange.
    Backend calls block: this process serves one session and nothing else.
    """

    greeted = True
    _peer = "the board server"

    def __init__(self, backend: Backend, stop: Callable[[int], object],
                 memory_limit: int | None = None) -> None:
        super().__init__()
        self.backend = backend
        self._stop = stop
        self.memory_limit = memory_limit
        """The address space this process may use (RLIMIT_AS), if limited."""
        self.workdir: str | None = None
        self.arena: Arena | None = None
        self.space: ArenaSpace | None = None
        self.session = ""
        self.exit_code = 0
        self._plans: dict[tuple[str, int, int], tuple[Any, Arena, list[Slot] | None]] = {}

    def connectionMade(self) -> None:
        super().connectionMade()
        self._peer = "the board server"
        self.callRemote(Ready, backend=self.backend.name, info=self.backend.info(), pid=os.getpid())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.arena is not None:
            try:
                self.arena.close()
            except BufferError:
                pass
        self._stop(self.exit_code)

    # --- helpers ------------------------------------------------------------------

    def _call(self, work: Callable[..., T], *args: Any) -> T:
        """Call the backend; on poisoning, answer and then exit so the server recycles us."""
        try:
            return work(*args)
        except BackendPoisoned:
            self.exit_code = EXIT_RECYCLE
            self.after_dispatch(self._recycle)
            raise
        except MemoryError:
            raise LimitExceeded(self._out_of_memory()) from None
        except (ModelRejected, RunFailed) as e:
            if self.memory_limit is not None and out_of_memory(str(e)):
                raise LimitExceeded(self._out_of_memory(str(e))) from None
            raise
        finally:
            flush_c_stdio()

    def _out_of_memory(self, detail: str = "") -> str:
        if self.memory_limit is None:
            limit = "the memory this board has left"
        else:
            limit = (f"the {_size(self.memory_limit)} of address space a session's executor"
                     " may use (compass-server --executor-memory, plus the tensor arena)")
        said = f" ({_clip(detail)})" if detail else ""
        return (f"The model needed more memory than {limit}{said}; nothing else was"
                " affected. Use smaller inputs or a smaller model, or ask the board's"
                " administrator to raise --executor-memory.")

    def _recycle(self) -> None:
        print("executor: the backend is poisoned; exiting to be recycled", file=sys.stderr)
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()  # writes the pending answer, then ends
        else:
            self._stop(self.exit_code)

    def _inside(self, path: str, what: str) -> str:
        if self.workdir is None:
            raise BadRequest(f"Attach the executor to a session before using {what}.")
        if "\0" in path:
            raise PathRefused(f"The {what} path {path!r} has a NUL character.")
        if os.path.isabs(path) or ".." in path.replace("\\", "/").split("/"):
            raise PathRefused(f"The {what} path {path!r} must be relative and stay in the session.")
        full = os.path.realpath(os.path.join(self.workdir, path))
        if os.path.commonpath([full, self.workdir]) != self.workdir:
            raise PathRefused(f"The {what} path {path!r} leaves the session directory.")
        if not os.path.isfile(full):
            raise NoSuchFile(
                f"There is no file {path!r} in the session directory; upload it first."
            )
        return full

    def _need_arena(self) -> Arena:
        if self.arena is None:
            raise BadRequest("Attach the executor to a session (and its arena) before running.")
        return self.arena

    def _inputs(self, rows: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
        arena = self._need_arena()
        result = []
        for row in rows:
            slot = Slot.from_amp(row)
            try:
                result.append((slot.name, arena.read(slot, copy=False)))
            except (ValueError, OverflowError) as e:
                raise BadRequest(f"Input slot {slot.name!r} is not usable: {e}.") from None
        return result

    # --- responders ---------------------------------------------------------------

    @Attach.responder
    def attach(self, workdir: str, arena: str, arena_size: int, session: str) -> dict[str, Any]:
        # A refused attach leaves the earlier session's directory and arena in place.
        if "\0" in workdir or "\0" in arena:
            raise BadRequest(
                f"The session directory {workdir!r} or arena {arena!r} has a NUL character;"
                " the board server names both, so this executor's server is out of step."
            )
        real = os.path.realpath(workdir)
        if not os.path.isdir(real):
            raise BadRequest(f"The session directory {workdir} is not a directory.")
        try:
            mapped = Arena.attach(os.path.join(real, arena), arena_size)
        except (OSError, ValueError, OverflowError) as e:
            raise BadRequest(f"The arena {arena} cannot be mapped: {e}.") from None
        try:
            os.chdir(real)
        except OSError as e:
            mapped.close()
            raise BadRequest(
                f"The session directory {workdir} is not usable: {e.strerror}."
            ) from None
        if self.arena is not None:
            try:
                self.arena.close()
            except BufferError:  # a view is still alive; the mapping goes with it
                pass
        self.arena = mapped
        self.space = ArenaSpace(mapped.path)
        self.workdir = real
        self.backend.session_dir = real
        self.session = session
        return {}

    @CheckHealth.responder
    def check_health(self) -> dict[str, Any]:
        healthy, detail = self._call(self.backend.health)
        return {"healthy": healthy, "detail": detail}

    @Load.responder
    def load(self, path: str, manifest: str | None = None) -> dict[str, Any]:
        full = self._inside(path, "model")
        parsed: Manifest | None = None
        try:
            if manifest is not None and manifest.lstrip().startswith("{"):
                parsed = parse_manifest(manifest, f"the manifest given for {path}")
            elif manifest:
                parsed = load_manifest(self._inside(manifest, "manifest"))
        except ManifestError as e:
            raise ModelRejected(f"Model {path} was not loaded: {e}.") from None
        model = self._call(lambda: self.backend.load(full, parsed, name=path))
        return {
            "model": path,
            "inputs": [s.to_amp() for s in model.inputs],
            "outputs": [s.to_amp() for s in model.outputs],
        }

    @Execute.responder
    def execute(
        self, model: str, inputs: list[dict[str, Any]], out_offset: int, out_capacity: int
    ) -> dict[str, Any]:
        arena = self._need_arena()
        arrays = self._inputs(inputs)
        specs = self.backend.model(model).outputs
        key = (model, out_offset, out_capacity)
        plan = self._plans.get(key)
        if plan is not None and plan[0] is specs and plan[1] is arena:
            planned = plan[2]
        else:  # the same model, arena and range give the same plan run after run
            planned = _plan_outputs(arena, specs, out_offset, out_capacity)
            if len(self._plans) >= 64:
                self._plans.clear()
            self._plans[key] = (specs, arena, planned)
        if planned:
            self._reserve(model, planned[0].offset, planned[-1].end)
        views = [arena.read(slot, copy=False) for slot in planned] if planned else None
        start = time.perf_counter()
        outputs = self._call(self.backend.run, model, arrays, views)
        seconds = time.perf_counter() - start
        if planned and views is not None and all(
            o is v for o, v in zip(outputs, views, strict=True)
        ):
            return {"outputs": [s.to_amp() for s in planned], "seconds": seconds}
        end = align_up(out_offset)
        for out in outputs:
            end = align_up(end + int(getattr(out, "nbytes", 0)))
        self._reserve(model, align_up(out_offset), min(end, out_offset + out_capacity,
                                                        arena.size), ran=True)
        try:
            slots = arena.write_all(
                [(spec.name, out) for spec, out in zip(specs, outputs, strict=True)],
                out_offset,
                out_capacity,
            )
        except ArenaFull as e:
            raise LimitExceeded(f"Model {model} ran, but its outputs do not fit: {e}.") from None
        except ValueError as e:
            raise BadRequest(f"The output range of model {model} is not usable: {e}.") from None
        return {"outputs": [s.to_amp() for s in slots], "seconds": seconds}

    def _reserve(self, model: str, start: int, end: int, *, ran: bool = False) -> None:
        """Allocate the arena's pages for outputs before anything writes them."""
        if self.space is None:
            return
        try:
            self.space.reserve(start, end)
        except OutOfSharedMemory as e:
            done = "ran, but its outputs were not kept" if ran else "was not run"
            raise LimitExceeded(f"Model {model} {done}: {e}") from None

    @Measure.responder
    def measure(
        self, model: str, inputs: list[dict[str, Any]], number: int, repeat: int, warmup: int
    ) -> dict[str, Any]:
        arrays = self._inputs(inputs)
        times = self._call(self.backend.benchmark, model, arrays, number, repeat, warmup)
        return {"times": times}


def _plan_outputs(
    arena: Arena, specs: Sequence[TensorSpec], offset: int, capacity: int
) -> list[Slot] | None:
    """The slots L{Arena.write_all} would give outputs of these specs, for the backend to
    write into directly; None when a shape is not fixed or they do not fit (the outputs
    are then written after the run, which reports what did not fit)."""
    slots = []
    cursor = align_up(offset)
    for spec in specs:
        if any(d < 0 for d in spec.shape):
            return None
        try:
            dtype = parse_dtype(spec.dtype)
        except ValueError:
            return None
        nbytes = math.prod(spec.shape) * dtype.itemsize
        slots.append(Slot(spec.name, dtype.name, spec.shape, cursor, nbytes))
        cursor = align_up(cursor + nbytes)
    end = slots[-1].end if slots else offset
    if end > offset + capacity or end > arena.size or offset < 0:
        return None
    return slots


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m compassd.executor",
        description="A compass-server executor: runs models for one session. It speaks AMP on"
        " fds 3 (in) and 4 (out); the board server starts it.",
    )
    parser.add_argument("--backend", choices=("aipu", "onnx"), required=True)
    parser.add_argument("--driver", help="the NPU driver library (default: COMPASS_AIPU_DRIVER)")
    parser.add_argument(
        "--job-timeout-ms",
        type=int,
        default=60_000,
        help="longest an NPU job may run before the executor gives up and exits (<= 0: no limit)",
    )
    parser.add_argument(
        "--parent",
        type=int,
        default=None,
        help="the board server's pid: the executor exits when that process is gone",
    )
    parser.add_argument(
        "--memory-limit",
        type=int,
        default=0,
        help="bytes of address space this process may use (RLIMIT_AS; <= 0: no limit)",
    )
    return parser.parse_args(argv)


def limit_memory(limit: int) -> int | None:
    """Set RLIMIT_AS to C{limit} bytes (never above a hard limit already set); return
    the limit now in force, or None when there is none."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit > 0:
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return limit
    return None if soft == resource.RLIM_INFINITY else soft


_NO_MEMORY = ("failed to allocate memory", "bad_alloc", "bad allocation", "cannot allocate",
              "out of memory", "unable to allocate")


def out_of_memory(message: str) -> bool:
    """Whether a backend's error message says an allocation failed."""
    lowered = message.lower()
    return any(words in lowered for words in _NO_MEMORY)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not die_with_parent(args.parent):
        print("executor: the board server that started it is gone; exiting", file=sys.stderr)
        return 0
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    for fd in (COMMAND_FD, ANSWER_FD):
        try:
            os.fstat(fd)
        except OSError:
            print(
                f"executor: fd {fd} is not open; the board server starts executors", file=sys.stderr
            )
            return 2
    try:
        memory_limit = limit_memory(args.memory_limit)
    except (OSError, ValueError) as e:
        print(f"executor: could not limit its memory to {args.memory_limit} bytes: {e}",
              file=sys.stderr)
        return 2
    backend = make_backend(args.backend, args.driver, args.job_timeout_ms)
    flush_c_stdio()

    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio

    reactor: Any = _reactor
    StandardIO: Any = stdio.StandardIO  # mypy reads the Windows one, without stdin/stdout

    status = [0]

    def stop(code: int) -> None:
        status[0] = code
        if reactor.running:
            reactor.stop()

    StandardIO(ExecutorServer(backend, stop, memory_limit), stdin=COMMAND_FD,
               stdout=ANSWER_FD)
    if args.parent is not None:
        def orphaned() -> None:
            print("executor: the board server that started it is gone; exiting",
                  file=sys.stderr)
            _exit(0)

        ParentWatch(args.parent, orphaned).start(reactor)
    reactor.run()
    return status[0]


def _exit(code: int) -> None:
    """Leave without Python's teardown: a hung driver job must not block the exit."""
    flush_c_stdio()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
