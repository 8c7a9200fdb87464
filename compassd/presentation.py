"""How a program tells a person what the client library is doing, and shows results.

The ``compass`` command and ``compass demo`` (L{compassd.demo}) both use these: the steps
of getting a board and loading a model (L{Steps}, L{leased_model}), the table of a model's
outputs (L{outputs_table}, L{summarize}), timing statistics, and how sizes, durations and
numbers are written. Nothing here parses command lines or picks an exit code; that is the
CLI's job, and nothing here imports it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .client import Lease, Model, Session, Tracker

UPLOAD_BAR_BYTES = 1 << 20
"""Models at least this large get an upload progress bar."""


# --- writing values --------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """A duration to the second, largest units first: C{42s}, C{3m07s}, C{2h05m}; C{-}
    for none."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size_text(size: int) -> str:
    """A size in bytes below 1 KiB, else in KiB, MiB or GiB with one decimal."""
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def number_text(value: float | None) -> str:
    """Six significant digits; C{-} for none."""
    return "-" if value is None else f"{value:.6g}"


def ms(seconds: float) -> str:
    """Seconds as milliseconds to the microsecond."""
    return f"{seconds * 1000:.3f} ms"


def place(position: int) -> str:
    """A queue position in words, counted from 1 (next in line). C{position} is as the
    protocol and the client library count: the number of requests ahead (0: next)."""
    if position <= 0:
        return "position 1 (next in line)"
    return f"position {position + 1} ({position} ahead)"


def people_count(summary: dict[str, Any]) -> dict[str, Any]:
    """C{summary} (from C{Tracker.summary}) with each waiting request's C{position}
    counted from 1 (1 is next in line), as C{compass status} shows it."""
    queues = [{**q, "waiting": [{**w, "position": w["position"] + 1} for w in q["waiting"]]}
              for q in summary["queues"]]
    return {**summary, "queues": queues}


# --- facts about results ---------------------------------------------------------------


def summarize(array: np.ndarray) -> dict[str, Any]:
    """Name-free facts about an output: shape, dtype, and min, max and mean (None when
    the array is empty or the value is not a finite number)."""
    row: dict[str, Any] = {"shape": list(array.shape), "dtype": array.dtype.name,
                           "min": None, "max": None, "mean": None}
    if array.size and array.dtype.kind in "biuf":
        values = array.astype(np.float64)
        for key, value in (("min", values.min()), ("max", values.max()),
                           ("mean", values.mean())):
            row[key] = float(value) if np.isfinite(value) else None
    return row


def timing_stats(times: list[float]) -> dict[str, float]:
    """Seconds per run over the rounds: mean, median, p90, p99, min, max, and throughput
    in runs per second (from the mean)."""
    values = np.asarray(times, dtype=np.float64)
    mean = float(values.mean())
    return {
        "mean": mean,
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "min": float(values.min()),
        "max": float(values.max()),
        "throughput": 1.0 / mean if mean > 0 else float("inf"),
    }


def outputs_table(rows: list[dict[str, Any]]) -> Table:
    """A table of outputs: each row a name plus what L{summarize} found."""
    table = Table(title="Outputs", title_justify="left")
    for column in ("output", "shape", "dtype", "min", "max", "mean"):
        table.add_column(column, justify="right" if column in ("min", "max", "mean")
                         else "left")
    for row in rows:
        table.add_row(row["name"], str(tuple(row["shape"])), row["dtype"],
                      number_text(row["min"]), number_text(row["max"]), number_text(row["mean"]))
    return table


# --- telling the steps -----------------------------------------------------------------


PIPE_WIDTH = 100_000
"""The width of a console that is not a terminal: wide enough that nothing is cut."""


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr). On a terminal it fits the terminal; in a pipe, a
    file or a log every value stays whole: no table cell is cut with "…" and no line is
    wrapped, so each row and each message is one line (use C{--json} to parse)."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal:
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=PIPE_WIDTH, soft_wrap=True)


def stderr_console() -> Console:
    """Where what happens along the way is told: stderr, so stdout stays data."""
    return console(stderr=True)


class Steps:
    """Tells what happens while a board is requested and a model loaded: a spinner with
    the live queue position and a progress bar on a terminal, a line per event otherwise
    (so logs of CI jobs read well)."""

    def __init__(self, console: Console, indent: str = "") -> None:
        self.console = console
        self.indent = indent
        self._status: Any = None

    def say(self, text: str) -> None:
        self.console.print(self.indent + text)

    def queued(self, key: str, request: str, position: int, devices: int) -> None:
        if devices == 0:
            self.say(f"[yellow]No device of key {key!r} is online at the tracker;"
                     " waiting for one to register (Ctrl-C to give up).[/]")
        self.say(f"queued: request {request} for {key!r}, {place(position)}")
        if self.console.is_terminal:
            self._status = self.console.status(
                f"waiting for a device of {key!r}: {place(position)}")
            self._status.start()

    def position(self, key: str, position: int) -> None:
        if self._status is not None:
            self._status.update(f"waiting for a device of {key!r}: {place(position)}")
        else:
            self.say(f"queue: {place(position)}")

    def why(self, key: str, why: str) -> None:
        """Say why the request waits where it does ("behind bob: priority 5 > 1")."""
        self.say(f"queue: {why}")

    def stop_waiting(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def load(self, session: Session, path: str) -> Model:
        """Upload the model (with a progress bar for a large one on a terminal) and load
        it; say how long the upload took."""
        size = os.path.getsize(path)
        started = time.monotonic()
        if size >= UPLOAD_BAR_BYTES and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TransferSpeedColumn,
            )

            with Progress("uploading {task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=self.console,
                          transient=True) as bar:
                task = bar.add_task(os.path.basename(path), total=size)
                model = session.load_model(
                    path, progress=lambda done, total: bar.update(task, completed=done))
        else:
            model = session.load_model(path)
        name = os.path.basename(path)
        if name in getattr(session, "cached", ()):
            self.say(f"model cached on the board: {name} ({size_text(size)}) was not sent"
                     f" again, loaded in {time.monotonic() - started:.2f} s")
        else:
            self.say(f"uploaded: {name} ({size_text(size)}), uploaded and"
                     f" loaded in {time.monotonic() - started:.2f} s")
        return model


@contextlib.contextmanager
def leased_model(tracker: Tracker, key: str, model_path: str, steps: Steps, *,
                 priority: int, lease: float | None, wait: float | None,
                 wait_for_board: bool = False) -> Iterator[tuple[Lease, Model]]:
    """Request a device of C{key}, telling the steps, upload and load the model; the
    lease (and its session) ends when the block does.

    This lives here rather than in L{compassd.client} because it is the client's own
    C{request}, C{open_session} and C{load_model}, unchanged, with each step told on
    C{steps}: the client library stays silent (no console, no rich) and a program that
    wants those calls without the telling makes them itself.
    """
    steps.say(f"requesting a device of {key!r} (priority {priority})")
    try:
        held = tracker.request(
            key, priority=priority, lease=lease, wait=wait, wait_for_board=wait_for_board,
            on_queued=lambda r, p, n: steps.queued(key, r, p, n),
            on_position=lambda p: steps.position(key, p),
            on_why=lambda why: steps.why(key, why),
            on_notice=steps.say)
    finally:
        steps.stop_waiting()
    with held:
        steps.say(f"granted: {held.device} at {held.address}, lease {held.id},"
                  f" {held.remaining:.0f} s")
        session = held.open_session()
        model = steps.load(session, model_path)
        ins = ", ".join(f"{s.name} {s.describe()}" for s in model.inputs)
        outs = ", ".join(f"{s.name} {s.describe()}" for s in model.outputs)
        steps.say(f"loaded: {model.name} ({ins}) -> ({outs})")
        yield held, model
