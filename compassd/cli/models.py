"""``compass run`` and ``compass bench``: request a board, upload a model, run or time it,
and show the outputs, the check against a golden, or the timing table."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import numpy as np
from rich.table import Table

from ..client import Lease, Model, Tracker
from ..presentation import (
    Steps,
    leased_model,
    ms,
    number_text,
    outputs_table,
    stderr_console,
    summarize,
    timing_stats,
)
from ..presentation import console as new_console
from ._tracker import EXIT_CHECK_FAILED, with_tracker
from .arrays import (
    assemble_inputs,
    check_output,
    read_golden,
    read_inputs,
    worst_of_frames,
    zeros_for,
)


def check_table(rows: list[dict[str, Any]], rtol: float, atol: float) -> Table:
    table = Table(title=f"Check (rtol {rtol:g}, atol {atol:g})", title_justify="left")
    for column in ("output", "result", "max abs error", "max rel error", "why"):
        table.add_column(column)
    for row in rows:
        result = "[green]PASS[/]" if row["passed"] else "[red]FAIL[/]"
        table.add_row(row["name"], result, number_text(row["max_abs"]), number_text(row["max_rel"]),
                      row["reason"])
    return table


def _model_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options compass run and compass bench share: which board, which model, inputs."""
    options = [
        click.option("--key", "-k", required=True, metavar="KEY",
                     help="The pool to request a device from, e.g. npu-x2."),
        click.argument("model", type=click.Path(exists=True, dir_okay=False)),
        click.option("--input", "-i", "inputs", multiple=True, metavar="[NAME=]FILE",
                     help="An input: .npy (inputs in model order), .npz (arrays by input"
                     " name), NAME=FILE, or raw bytes of the input's dtype and shape."
                     " Repeat for each input."),
        click.option("--priority", "-p", default=1, show_default=True,
                     help="Queue priority: higher is served first."),
        click.option("--lease", "lease_s", type=click.FloatRange(min=0, min_open=True),
                     metavar="SECONDS", help="Lease length to ask for (the tracker caps"
                     " it)."),
        click.option("--wait", type=click.FloatRange(min=0), metavar="SECONDS",
                     help="Give up after waiting this long in the queue (default: wait"
                     " until Ctrl-C)."),
        click.option("--wait-for-board", is_flag=True,
                     help="Wait for a board of KEY to register even if the tracker knows"
                     " none (default: a key no device serves is an error, exit 1, naming"
                     " the keys that exist)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object on stdout for scripts."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _on_a_device(ctx: click.Context, key: str, model: str, priority: int,
                 lease_s: float | None, wait: float | None, wait_for_board: bool,
                 use: Callable[[Lease, Model, Steps], None]) -> None:
    """Hold a device of C{key} with C{model} loaded, telling each step on stderr, for
    C{use}; the lease ends when C{use} returns or raises."""
    steps = Steps(stderr_console())

    def work(tracker: Tracker) -> None:
        with leased_model(tracker, key, model, steps, priority=priority, lease=lease_s,
                          wait=wait, wait_for_board=wait_for_board) as (held, loaded):
            use(held, loaded, steps)

    with_tracker(ctx, work)


@click.command(name="run")
@_model_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              metavar="OUT.npz", help="Write the outputs to this .npz, keyed by name.")
@click.option("--check", "-c", "golden", type=click.Path(exists=True, dir_okay=False),
              metavar="GOLDEN", help="Compare the outputs with GOLDEN (.npz by output name,"
              " .npy for one output, or raw bytes of all outputs in order); exit 4 on a"
              " mismatch.")
@click.option("--rtol", default=1e-5, show_default=True, type=click.FloatRange(min=0),
              help="Relative tolerance for --check.")
@click.option("--atol", default=1e-6, show_default=True, type=click.FloatRange(min=0),
              help="Absolute tolerance for --check (--rtol 0 --atol 0: exact).")
@click.option("--frames", "-f", default=1, show_default=True, type=click.IntRange(min=1),
              help="Run the model this many times; --check checks every frame.")
@click.pass_context
def run_command(ctx: click.Context, key: str, model: str, inputs: tuple[str, ...],
                priority: int, lease_s: float | None, wait: float | None,
                wait_for_board: bool, as_json: bool, output: str | None,
                golden: str | None, rtol: float, atol: float, frames: int) -> None:
    """Run MODEL once on a device of KEY and show its outputs.

    Requests a device (showing the queue position while it waits), uploads and loads
    MODEL, runs it on the inputs, and prints each output's name, shape, dtype, min, max
    and mean. With --check, prints PASS or FAIL per output with the largest absolute and
    relative errors, and exits with 4 if any output fails.
    """
    items = read_inputs(inputs)
    report: dict[str, Any] = {}

    def work(held: Lease, loaded: Model, steps: Steps) -> None:
        arrays = assemble_inputs(items, loaded.inputs)
        names = [spec.name for spec in loaded.outputs]
        seconds: list[float] = []
        checks: list[list[dict[str, Any]]] = []
        results: list[np.ndarray] = []
        expected: dict[str, np.ndarray] | None = None
        for _ in range(frames):
            results = loaded.run(arrays)
            seconds.append(loaded.last_seconds or 0.0)
            if golden is not None:
                if expected is None:
                    expected = read_golden(golden, results, loaded.outputs)
                checks.append([check_output(n, r, expected, rtol, atol)
                               for n, r in zip(names, results, strict=False)])
        steps.say(f"ran: {frames} frame(s), {ms(float(np.mean(seconds)))} per frame"
                  " on the board")
        report.update(key=key, device=held.device, lease=held.id, model=loaded.name,
                      frames=frames, seconds=seconds, outputs=[
                          {"name": n, **summarize(r)}
                          for n, r in zip(names, results, strict=False)])
        if output is not None:
            np.savez(output, **dict(zip(names, results, strict=False)))
            report["written"] = output
            steps.say(f"wrote: {output}")
        if golden is not None:
            report["check"] = worst_of_frames(checks, rtol, atol)

    _on_a_device(ctx, key, model, priority, lease_s, wait, wait_for_board, work)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        console = new_console()
        console.print(outputs_table(report["outputs"]))
        if "check" in report:
            console.print(check_table(report["check"]["outputs"], rtol, atol))
    check = report.get("check")
    if check is not None:
        failed = [row["name"] for row in check["outputs"] if not row["passed"]]
        total = len(check["outputs"])
        if failed:
            click.echo(f"compass: check FAILED for {len(failed)} of {total} output(s):"
                       f" {', '.join(failed)}.", err=True)
            ctx.exit(EXIT_CHECK_FAILED)
        click.echo(f"check PASS ({total}/{total} outputs)", err=True)


@click.command()
@_model_options
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Runs before timing starts.")
@click.option("--number", "-n", default=10, show_default=True, type=click.IntRange(min=1),
              help="Runs per round (each round's time is its mean per run).")
@click.option("--repeat", "-r", default=5, show_default=True, type=click.IntRange(min=1),
              help="Rounds.")
@click.pass_context
def bench(ctx: click.Context, key: str, model: str, inputs: tuple[str, ...], priority: int,
          lease_s: float | None, wait: float | None, wait_for_board: bool, as_json: bool,
          warmup: int, number: int, repeat: int) -> None:
    """Time MODEL on a device of KEY, measured on the board.

    Runs it WARMUP times, then REPEAT rounds of NUMBER runs, and prints the mean, median,
    p90, p99, min and max seconds per run over the rounds, and the throughput in runs per
    second. With no -i, inputs of zeros of the model's shapes are used.
    """
    items = read_inputs(inputs)
    report: dict[str, Any] = {}

    def work(held: Lease, loaded: Model, steps: Steps) -> None:
        arrays = assemble_inputs(items, loaded.inputs) if items else zeros_for(
            loaded.inputs)
        steps.say(f"timing: {warmup} warmup, {repeat} round(s) of {number} run(s)")
        times = loaded.benchmark(arrays, number=number, repeat=repeat, warmup=warmup)
        report.update(key=key, device=held.device, lease=held.id, model=loaded.name,
                      warmup=warmup, number=number, repeat=repeat, times=list(times),
                      **timing_stats(times))

    _on_a_device(ctx, key, model, priority, lease_s, wait, wait_for_board, work)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    table = Table(title=f"{report['model']} on {report['device']}: seconds per run over"
                  f" {repeat} round(s) of {number}", title_justify="left")
    for column in ("mean", "median", "p90", "p99", "min", "max", "throughput"):
        table.add_column(column, justify="right")
    table.add_row(*(ms(report[k]) for k in ("mean", "median", "p90", "p99", "min", "max")),
                  f"{report['throughput']:.1f} runs/s")
    new_console().print(table)
