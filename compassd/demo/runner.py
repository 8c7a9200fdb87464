"""``compass demo``: the whole path of a job, on this machine, in a few seconds.

A tracker and a board server (ONNX backend, on the CPU) start as child processes on
127.0.0.1; the demo requests the board like any user, uploads a digit classifier shipped
with compassd, runs it on held-out samples and checks its answers against their labels,
then stops both daemons by PID. Nothing is fetched from the network.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from ..client import connect_tracker
from ..presentation import Steps, leased_model, outputs_table, summarize
from .daemons import Daemon, DaemonError

HERE = Path(__file__).resolve().parent
MODEL = HERE / "digits.onnx"
"""A 64 -> 32 -> 10 perceptron trained on scikit-learn's digits by
``scripts/train_demo_model.py``: input "image" float32 (N, 64) with pixels in 0..1;
outputs "probabilities" float32 (N, 10) and "digit" int64 (N,)."""
SAMPLES = HERE / "samples.npz"
"""Held-out test images ("images", float32 (200, 64)) and their "labels" (int64)."""
KEY = "demo"


class DemoError(Exception):
    """The demo cannot run here; the message says why and what to do."""


def load_samples(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first C{count} shipped sample images and their labels."""
    with np.load(SAMPLES, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    if count is not None:
        images, labels = images[:count], labels[:count]
    return np.ascontiguousarray(images, np.float32), labels


def run_demo(console: Console, samples: int = 200, deadline: float = 60.0) -> float:
    """Run the demo, telling each step on C{console}; returns the accuracy (0..1).

    Raises L{DemoError} if ONNX Runtime is missing or a daemon does not start; the
    daemons it started are stopped whatever happens, also on Ctrl-C.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise DemoError("The demo runs its model with ONNX Runtime, which is not installed:"
                        " pip install 'compassd[onnx]' and try again.")
    if not MODEL.is_file() or not SAMPLES.is_file():
        raise DemoError(f"The demo's model or samples are missing from {HERE}; reinstall"
                        " compassd, or run scripts/train_demo_model.py in its source tree.")
    images, labels = load_samples(samples)
    daemons: list[Daemon] = []
    started = time.monotonic()
    say = console.print
    with tempfile.TemporaryDirectory(prefix="compass-demo-") as work:
        try:
            say("[bold]1. Starting compass-tracker[/] on 127.0.0.1")
            tracker = Daemon.start("compass-tracker", deadline=deadline, cwd=work)
            daemons.append(tracker)
            say(f"   tracker listening on 127.0.0.1:{tracker.port} (pid {tracker.pid})")
            say(f"[bold]2. Starting compass-server[/] with the onnx backend in pool {KEY!r}")
            server = Daemon.start(
                "compass-server", "--key", KEY, "--tracker", f"127.0.0.1:{tracker.port}",
                "--backend", "onnx", "--workdir", str(Path(work) / "board"),
                "--device", "demo-cpu-1", deadline=deadline, cwd=work)
            daemons.append(server)
            say(f"   board server listening on 127.0.0.1:{server.port} (pid {server.pid})")
            say(f"[bold]3. Requesting a device of {KEY!r}[/] as a user would:"
                f" connect_tracker('127.0.0.1', {tracker.port}).request({KEY!r},"
                " wait_for_board=True)")
            steps = Steps(console, indent="   ")
            client = connect_tracker("127.0.0.1", tracker.port, user="demo",
                                     timeout=deadline)
            try:
                with leased_model(client, KEY, str(MODEL), steps, priority=1, lease=None,
                                  wait=deadline, wait_for_board=True) as (_, model):
                    say(f"[bold]4. Running[/] {model.name} on {len(labels)} handwritten"
                        " digits (8x8 pixels) in one batch")
                    probabilities, digits = model.run({"image": images})
                    console.print(outputs_table([
                        {"name": "probabilities", **summarize(probabilities)},
                        {"name": "digit", **summarize(digits)}]))
            finally:
                client.close()
            right = int((digits == labels).sum())
            accuracy = right / len(labels)
            shown = " ".join(f"{p}" if p == t else f"[red]{p}(not {t})[/]"
                             for p, t in zip(digits[:12].tolist(), labels[:12].tolist(),
                                             strict=True))
            say(f"   first predictions: {shown}")
            say(f"[bold green]accuracy: {right}/{len(labels)} = {accuracy:.1%}[/]")
        except DaemonError as e:
            raise DemoError(str(e)) from None
        finally:
            for daemon in reversed(daemons):
                status = daemon.stop()
                say(f"stopped {daemon.plugin} (pid {daemon.pid}, exit status {status})")
    say(f"done in {time.monotonic() - started:.1f} s")
    return accuracy
