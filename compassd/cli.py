"""The ``compass`` command: run models on shared boards, look at and administer a tracker.

Exit codes: 0 success; 1 the tracker or board refused or failed (one sentence on stderr);
2 a usage error; 3 the tracker cannot be reached; 4 ``--check`` found an output that does
not match; 130 interrupted (Ctrl-C).

Data goes to stdout (tables, or JSON with ``--json``); what happens along the way
(queue position, upload progress) goes to stderr, so scripts can pipe stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
import numpy as np
from rich.console import Console, Group
from rich.table import Table

from . import __version__
from .client import (
    CompassError,
    Lease,
    Model,
    Session,
    TensorSpec,
    Tracker,
    TrackerUnreachable,
    connect_tracker,
    parse_address,
)
from .tls import TLSFailed

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_CHECK_FAILED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES = (
    "Exit codes: 0 success; 1 the tracker or board refused or failed (one sentence on"
    " stderr); 2 a usage error; 3 the tracker cannot be reached; 4 --check found an output"
    " that does not match its golden; 130 interrupted (Ctrl-C)."
)

TRACKER_HELP = (
    "The tracker as HOST:PORT. Default: the COMPASS_TRACKER environment variable, then"
    " 127.0.0.1:9190."
)


def _tracker_address(value: str | None) -> str:
    return value or os.environ.get("COMPASS_TRACKER") or "127.0.0.1:9190"


def _connect(ctx: click.Context) -> Tracker:
    address = _tracker_address(ctx.obj["tracker"])
    try:
        host, port = parse_address(address)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--tracker") from e
    tls = ctx.obj.get("tls") or {}
    return connect_tracker(host, port, ctx.obj["token"], user=ctx.obj["user"],
                           tls=bool(tls.get("tls") or tls.get("ca") or tls.get("cert")),
                           ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"))


def _run(ctx: click.Context, action: Callable[[Tracker], Any]) -> Any:
    """Connect, run C{action}, close; turn every compassd error into one sentence."""
    try:
        tracker = _connect(ctx)
        try:
            return action(tracker)
        finally:
            tracker.close()
    except (TrackerUnreachable, TLSFailed) as e:
        click.echo(f"compass: {e}", err=True)
        ctx.exit(EXIT_UNREACHABLE)
    except CompassError as e:
        click.echo(f"compass: {e}", err=True)
        ctx.exit(EXIT_REFUSED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.option("--tracker", metavar="HOST:PORT", help=TRACKER_HELP)
@click.option(
    "--token",
    envvar="COMPASS_TOKEN",
    help="Your token, if the tracker has a tokens file. Default: COMPASS_TOKEN.",
)
@click.option("--user", envvar="COMPASS_USER", help="Name to show when no token is used.")
@click.option("--tls", is_flag=True, envvar="COMPASS_TLS",
              help="Connect with TLS, trusting the system's CAs (implied by --ca)."
              " Default: COMPASS_TLS.")
@click.option("--ca", metavar="FILE", envvar="COMPASS_CA",
              type=click.Path(exists=True, dir_okay=False),
              help="Connect with TLS and trust only the CA in this PEM file for the"
              " tracker's and the boards' certificates. Default: COMPASS_CA.")
@click.option("--cert", metavar="FILE", envvar="COMPASS_CERT",
              type=click.Path(exists=True, dir_okay=False),
              help="This client's certificate (PEM), for a tracker that asks for one."
              " Default: COMPASS_CERT.")
@click.option("--cert-key", metavar="FILE", envvar="COMPASS_CERT_KEY",
              type=click.Path(exists=True, dir_okay=False),
              help="The private key of --cert (PEM), if it is not in the --cert file."
              " Default: COMPASS_CERT_KEY.")
@click.pass_context
def main(ctx: click.Context, tracker: str | None, token: str | None, user: str | None,
         tls: bool, ca: str | None, cert: str | None, cert_key: str | None) -> None:
    """compass: share NPU boards through a compassd tracker.

    Try everything on this machine with `compass demo`. Run a model on a board of a
    pool with `compass run --key KEY MODEL -i INPUT.npy`, time it with `compass bench`.
    Look at who holds which board with `compass status`; admins drain boards for
    maintenance with `compass drain DEVICE`. Shell completion: `compass completion`.
    """
    if cert_key is not None and cert is None:
        raise click.BadParameter("--cert-key needs --cert, the certificate it belongs to.",
                                 param_hint="--cert-key")
    ctx.obj = {"tracker": tracker, "token": token, "user": user,
               "tls": {"tls": tls, "ca": ca, "cert": cert, "key": cert_key}}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


_STATE_STYLE = {
    "free": "green",
    "busy": "yellow",
    "draining": "magenta",
    "quarantined": "red",
    "offline": "dim",
}


def render_status(summary: dict[str, Any], console: Console, waiting_shown: int) -> None:
    """Print the devices and queues tables of C{summary} (from L{Tracker.summary})."""
    console.print(status_tables(summary, waiting_shown))


def status_tables(summary: dict[str, Any], waiting_shown: int) -> Group:
    """The devices and queues tables of C{summary}, as one renderable."""
    devices = Table(title="Devices", title_justify="left", expand=False)
    for column in ("key", "device", "address", "state", "holder", "held for", "lease left",
                   "info"):
        devices.add_column(column)
    for d in sorted(summary["devices"], key=lambda d: (d["key"], d["name"])):
        state = d["state"]
        if d["health"] != "ok":
            state += f" ({d['health']})"
        info = " ".join(d["info"] + [f"#{t}" for t in d["tags"]])
        devices.add_row(
            d["key"], d["name"], d["address"],
            f"[{_STATE_STYLE.get(d['state'], '')}]{state}[/]",
            d["holder"] or "-", _duration(d["held_for"]), _duration(d["lease_left"]), info,
        )
    if not summary["devices"]:
        devices.add_row("-", "no devices registered", "", "", "", "", "", "")

    queues = Table(title="Queues", title_justify="left")
    for column in ("key", "free/total", "position", "request", "user", "priority", "waited"):
        queues.add_column(column)
    for q in summary["queues"]:
        free = f"{q['free']}/{q['total']}"
        rows = q["waiting"]
        if not rows:
            queues.add_row(q["key"], free, "-", "nobody waiting", "", "", "")
        for i, w in enumerate(rows):
            queues.add_row(
                q["key"] if i == 0 else "", free if i == 0 else "", str(w["position"]),
                w["request"], w["user"], str(w["priority"]), _duration(w["waited"]),
            )
        if q["count"] > len(rows):
            queues.add_row("", "", "...", f"and {q['count'] - len(rows)} more", "", "", "")
    if not summary["queues"]:
        queues.add_row("-", "", "", "no queues", "", "", "")
    return Group(devices, queues)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.option("--waiting", default=20, show_default=True,
              help="Waiting requests to show per key in the table (--json shows all).")
@click.option("--watch", "-w", is_flag=True,
              help="Refresh the tables in place until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes with --watch.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="With --watch, stop after this many refreshes (default: until Ctrl-C).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, waiting: int, watch: bool, interval: float,
           count: int | None) -> None:
    """Show every device (state, holder, lease left) and every queue (who waits, where).

    With --json: {"devices": [...], "queues": [...]}; each queue has key, free, total,
    count and the list "waiting" in queue order. With --watch the tables refresh in
    place (with --json, one JSON object per line per refresh) until Ctrl-C.
    """
    if not watch:
        summary = _run(ctx, lambda t: t.summary(None if as_json else waiting))
        if as_json:
            click.echo(json.dumps(summary, indent=2, sort_keys=True))
        else:
            render_status(summary, Console(), waiting)
        return
    where = _tracker_address(ctx.obj["tracker"])
    _run(ctx, lambda t: _watch_status(t, where, as_json, waiting, interval, count))


def _watch_status(tracker: Tracker, where: str, as_json: bool, waiting: int,
                  interval: float, count: int | None) -> None:
    """Refresh the status every C{interval} seconds, C{count} times or until Ctrl-C."""
    import time

    from rich.live import Live

    shown = 0
    try:
        if as_json:
            while count is None or shown < count:
                if shown:
                    time.sleep(interval)
                click.echo(json.dumps(tracker.summary(None), sort_keys=True))
                shown += 1
            return
        with Live(console=Console(), auto_refresh=False) as live:
            while count is None or shown < count:
                if shown:
                    time.sleep(interval)
                clock = time.strftime("%H:%M:%S")
                live.update(Group(status_tables(tracker.summary(waiting), waiting),
                                  f"[dim]tracker {where} at {clock}; Ctrl-C stops.[/]"),
                            refresh=True)
                shown += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def devices(ctx: click.Context, as_json: bool) -> None:
    """List the devices the tracker knows."""
    rows = _run(ctx, lambda t: t.devices())
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        render_status({"devices": rows, "queues": []}, Console(), 0)


def _admin(name: str, action: Callable[[Tracker, str], None], done: str, help_text: str,
           argument: str) -> None:
    @main.command(name=name, help=help_text)
    @click.argument(argument)
    @click.pass_context
    def command(ctx: click.Context, **kwargs: str) -> None:
        target = kwargs[argument.lower()]
        _run(ctx, lambda t: action(t, target))
        click.echo(done.format(target))


_admin("drain", lambda t, d: t.drain(d), "{} is draining: it finishes its lease, then takes no"
       " more.", "Admin: let DEVICE finish its current lease, then grant it no more.", "DEVICE")
_admin("undrain", lambda t, d: t.undrain(d), "{} is back in service.",
       "Admin: put a drained DEVICE back into service.", "DEVICE")
_admin("cancel", lambda t, r: t.cancel(r), "Request {} is cancelled.",
       "Cancel a waiting REQUEST (yours; an admin may cancel anyone's).", "REQUEST")
_admin("kick", lambda t, lease: t.kick(lease), "Lease {} is ended.",
       "Admin: end LEASE now; its holder is told it was kicked.", "LEASE")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def version(as_json: bool) -> None:
    """Print compassd's version and the protocol versions it speaks."""
    from .protocol import SUPPORTED_VERSIONS

    if as_json:
        click.echo(json.dumps({"compassd": __version__,
                               "protocol": list(SUPPORTED_VERSIONS)}))
        return
    click.echo(f"compassd {__version__} (protocol {', '.join(map(str, SUPPORTED_VERSIONS))})")


@main.command()
@click.argument("user")
@click.option("--roles", default="client", show_default=True,
              help="Comma-separated roles: client, board, admin.")
@click.option("--keys", default="*", show_default=True,
              help="Comma-separated patterns of the device keys USER may request.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"token": ..., "line": ...} for scripts.')
def token(user: str, roles: str, keys: str, as_json: bool) -> None:
    """Make a new token for USER: prints the token (give it to the user) and the line to
    add to the tracker's tokens file (only its hash is stored there)."""
    from .tracker.access import hash_token, new_token

    secret = new_token()
    line = f"{hash_token(secret)} user={user} roles={roles} keys={keys}"
    if as_json:
        click.echo(json.dumps({"token": secret, "line": line}))
        return
    click.echo(f"token: {secret}")
    click.echo(f"tokens file line: {line}")


# --- running models: compass run, compass bench -------------------------------------------


def stderr_console() -> Console:
    """Where what happens along the way is told: stderr, so stdout stays data."""
    return Console(stderr=True, highlight=False)


def _read_array_file(path: str, what: str) -> np.ndarray | dict[str, np.ndarray] | bytes:
    """A .npy file's array, a .npz file's arrays by name, or any other file's raw bytes."""
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror or e}.",
                                 param_hint=what) from e
    except ValueError as e:
        raise click.BadParameter(f"{path} is not a valid numpy file ({e}).",
                                 param_hint=what) from e


InputItem = tuple[str | None, str, "np.ndarray | dict[str, np.ndarray] | bytes"]


def read_inputs(values: tuple[str, ...]) -> list[InputItem]:
    """Read each C{-i} value (C{FILE} or C{NAME=FILE}) now, before any board is held."""
    items: list[InputItem] = []
    for value in values:
        name: str | None = None
        path = value
        if "=" in value and not os.path.exists(value):
            name, path = value.split("=", 1)
        items.append((name, path, _read_array_file(path, "-i/--input")))
    return items


def _raw_array(data: bytes, spec: TensorSpec, path: str, what: str) -> np.ndarray:
    """Raw bytes as the tensor C{spec} (the NPU driver tools' input and golden files)."""
    dtype = np.dtype(spec.dtype)
    if any(d < 0 for d in spec.shape):
        raise click.UsageError(
            f"{path} holds raw bytes but {what} {spec.name!r} is {spec.describe()}, whose"
            " size is not fixed; give a .npy file instead.")
    want = int(np.prod(spec.shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        raise click.UsageError(
            f"{path} is {len(data)} bytes but {what} {spec.name!r} ({spec.describe()})"
            f" takes {want}; give a file of the right size or a .npy file.")
    return np.frombuffer(data, dtype).reshape(spec.shape).copy()


def assemble_inputs(items: list[InputItem], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The inputs by name: unnamed files fill the model's inputs in order, C{NAME=FILE}
    and .npz entries go by name; raw files take the shape and dtype of their input."""
    by_name = {spec.name: spec for spec in specs}
    result: dict[str, np.ndarray] = {}
    position = 0

    def put(name: str, array: np.ndarray, path: str) -> None:
        if name in result:
            raise click.UsageError(f"Input {name!r} is given twice (again by {path}).")
        result[name] = array

    for name, path, data in items:
        if isinstance(data, dict):
            for key, array in data.items():
                put(key, array, path)
            continue
        if name is None:
            if position >= len(specs):
                raise click.UsageError(
                    f"The model takes {len(specs)} input(s) but {path} would be input"
                    f" {position + 1}; give one file per input.")
            name = specs[position].name
            position += 1
        if isinstance(data, bytes):
            if name not in by_name:
                raise click.UsageError(
                    f"The model has no input named {name!r}; its inputs are"
                    f" {', '.join(by_name) or 'none'}.")
            put(name, _raw_array(data, by_name[name], path, "input"), path)
        else:
            put(name, data, path)
    return result


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


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """Whether C{got} matches the golden C{want} (numpy's isclose: |got - want| <= atol +
    rtol * |want|, so --rtol 0 --atol 0 is exact), with the largest absolute and relative
    errors, and the reason when it does not."""
    row: dict[str, Any] = {"passed": False, "max_abs": None, "max_rel": None, "reason": ""}
    if got.shape != want.shape:
        row["reason"] = (f"shape {tuple(got.shape)} but the golden is {tuple(want.shape)}")
        return row
    a = got.astype(np.float64)
    b = want.astype(np.float64)
    if a.size == 0:
        row.update(passed=True, max_abs=0.0, max_rel=0.0)
        return row
    error = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(error == 0, 0.0, error / np.abs(b))
    row["max_abs"] = float(np.nanmax(error)) if not np.all(np.isnan(error)) else None
    row["max_rel"] = float(np.nanmax(relative)) if not np.all(np.isnan(relative)) else None
    close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    row["passed"] = bool(close.all())
    if not row["passed"]:
        row["reason"] = f"{int((~close).sum())} of {close.size} values differ"
    return row


def read_golden(path: str, outputs: list[np.ndarray], specs: list[TensorSpec]
                ) -> dict[str, np.ndarray]:
    """The golden outputs by name from a .npz (by output name, as -o writes), a .npy (a
    model with one output) or raw bytes (all outputs concatenated in model order, as the
    NPU driver's tools take them)."""
    data = _read_array_file(path, "--check")
    names = [spec.name for spec in specs]
    if isinstance(data, dict):
        return data
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise click.UsageError(
                f"{path} holds one array but the model has {len(names)} outputs; give a"
                " .npz keyed by output name (as -o writes).")
        return {names[0]: data}
    total = sum(o.nbytes for o in outputs)
    if len(data) != total:
        raise click.UsageError(
            f"{path} is {len(data)} bytes but the outputs together are {total} bytes; a raw"
            " golden file holds every output's bytes in model order.")
    golden: dict[str, np.ndarray] = {}
    offset = 0
    for name, out in zip(names, outputs, strict=True):
        golden[name] = np.frombuffer(data[offset:offset + out.nbytes], out.dtype
                                     ).reshape(out.shape)
        offset += out.nbytes
    return golden


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


def _size_text(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


UPLOAD_BAR_BYTES = 1 << 20
"""Models at least this large get an upload progress bar."""


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
            self.say(f"[yellow]No device of key {key!r} is registered at the tracker yet;"
                     " waiting for one (Ctrl-C to give up).[/]")
        self.say(f"queued: request {request} for {key!r}, {_place(position)}")
        if self.console.is_terminal:
            self._status = self.console.status(
                f"waiting for a device of {key!r}: {_place(position)}")
            self._status.start()

    def position(self, key: str, position: int) -> None:
        if self._status is not None:
            self._status.update(f"waiting for a device of {key!r}: {_place(position)}")
        else:
            self.say(f"queue: {_place(position)}")

    def stop_waiting(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def load(self, session: Session, path: str) -> Model:
        """Upload the model (with a progress bar for a large one on a terminal) and load
        it; say how long the upload took."""
        size = os.path.getsize(path)
        started = _monotonic()
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
        self.say(f"uploaded: {os.path.basename(path)} ({_size_text(size)}), uploaded and"
                 f" loaded in {_monotonic() - started:.2f} s")
        return model


def _place(position: int) -> str:
    """Queue position 0 is next in line."""
    return "next in line" if position <= 0 else f"position {position} ({position} ahead)"


def _monotonic() -> float:
    import time

    return time.monotonic()


@contextlib.contextmanager
def leased_model(tracker: Tracker, key: str, model_path: str, steps: Steps, *,
                 priority: int, lease: float | None, wait: float | None
                 ) -> Iterator[tuple[Lease, Model]]:
    """Request a device of C{key}, telling the steps, upload and load the model; the
    lease (and its session) ends when the block does."""
    steps.say(f"requesting a device of {key!r} (priority {priority})")
    try:
        held = tracker.request(
            key, priority=priority, lease=lease, wait=wait,
            on_queued=lambda r, p, n: steps.queued(key, r, p, n),
            on_position=lambda p: steps.position(key, p))
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


def outputs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Outputs", title_justify="left")
    for column in ("output", "shape", "dtype", "min", "max", "mean"):
        table.add_column(column, justify="right" if column in ("min", "max", "mean")
                         else "left")
    for row in rows:
        table.add_row(row["name"], str(tuple(row["shape"])), row["dtype"],
                      _number(row["min"]), _number(row["max"]), _number(row["mean"]))
    return table


def check_table(rows: list[dict[str, Any]], rtol: float, atol: float) -> Table:
    table = Table(title=f"Check (rtol {rtol:g}, atol {atol:g})", title_justify="left")
    for column in ("output", "result", "max abs error", "max rel error", "why"):
        table.add_column(column)
    for row in rows:
        result = "[green]PASS[/]" if row["passed"] else "[red]FAIL[/]"
        table.add_row(row["name"], result, _number(row["max_abs"]), _number(row["max_rel"]),
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
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object on stdout for scripts."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command(name="run")
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
                priority: int, lease_s: float | None, wait: float | None, as_json: bool,
                output: str | None, golden: str | None, rtol: float, atol: float,
                frames: int) -> None:
    """Run MODEL once on a device of KEY and show its outputs.

    Requests a device (showing the queue position while it waits), uploads and loads
    MODEL, runs it on the inputs, and prints each output's name, shape, dtype, min, max
    and mean. With --check, prints PASS or FAIL per output with the largest absolute and
    relative errors, and exits with 4 if any output fails.
    """
    items = read_inputs(inputs)
    steps = Steps(stderr_console())
    report: dict[str, Any] = {}

    def work(tracker: Tracker) -> None:
        with leased_model(tracker, key, model, steps, priority=priority, lease=lease_s,
                          wait=wait) as (held, loaded):
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
                    checks.append([_check_one(n, r, expected, rtol, atol)
                                   for n, r in zip(names, results, strict=False)])
            steps.say(f"ran: {frames} frame(s), {_ms(float(np.mean(seconds)))} per frame"
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
                report["check"] = _worst(checks, rtol, atol)

    _run(ctx, work)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        console = Console(highlight=False)
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


def _check_one(name: str, result: np.ndarray, expected: dict[str, np.ndarray],
               rtol: float, atol: float) -> dict[str, Any]:
    if name not in expected:
        return {"name": name, "passed": False, "max_abs": None, "max_rel": None,
                "reason": f"the golden file has no {name!r} (it has"
                f" {', '.join(expected) or 'nothing'})"}
    return {"name": name, **compare(result, np.asarray(expected[name]), rtol, atol)}


def _worst(checks: list[list[dict[str, Any]]], rtol: float, atol: float) -> dict[str, Any]:
    """Per output, the frame with the largest error (or the first that failed)."""
    rows: list[dict[str, Any]] = []
    for per_output in zip(*checks, strict=True):
        failed = [r for r in per_output if not r["passed"]]
        pick = failed[0] if failed else max(per_output, key=lambda r: r["max_abs"] or 0.0)
        rows.append(dict(pick))
    return {"passed": all(r["passed"] for r in rows), "rtol": rtol, "atol": atol,
            "outputs": rows}


@main.command()
@_model_options
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Runs before timing starts.")
@click.option("--number", "-n", default=10, show_default=True, type=click.IntRange(min=1),
              help="Runs per round (each round's time is its mean per run).")
@click.option("--repeat", "-r", default=5, show_default=True, type=click.IntRange(min=1),
              help="Rounds.")
@click.pass_context
def bench(ctx: click.Context, key: str, model: str, inputs: tuple[str, ...], priority: int,
          lease_s: float | None, wait: float | None, as_json: bool, warmup: int, number: int,
          repeat: int) -> None:
    """Time MODEL on a device of KEY, measured on the board.

    Runs it WARMUP times, then REPEAT rounds of NUMBER runs, and prints the mean, median,
    p90, p99, min and max seconds per run over the rounds, and the throughput in runs per
    second. With no -i, inputs of zeros of the model's shapes are used.
    """
    items = read_inputs(inputs)
    steps = Steps(stderr_console())
    report: dict[str, Any] = {}

    def work(tracker: Tracker) -> None:
        with leased_model(tracker, key, model, steps, priority=priority, lease=lease_s,
                          wait=wait) as (held, loaded):
            arrays = assemble_inputs(items, loaded.inputs) if items else zeros_for(
                loaded.inputs)
            steps.say(f"timing: {warmup} warmup, {repeat} round(s) of {number} run(s)")
            times = loaded.benchmark(arrays, number=number, repeat=repeat, warmup=warmup)
            report.update(key=key, device=held.device, lease=held.id, model=loaded.name,
                          warmup=warmup, number=number, repeat=repeat, times=list(times),
                          **timing_stats(times))

    _run(ctx, work)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    table = Table(title=f"{report['model']} on {report['device']}: seconds per run over"
                  f" {repeat} round(s) of {number}", title_justify="left")
    for column in ("mean", "median", "p90", "p99", "min", "max", "throughput"):
        table.add_column(column, justify="right")
    table.add_row(*(_ms(report[k]) for k in ("mean", "median", "p90", "p99", "min", "max")),
                  f"{report['throughput']:.1f} runs/s")
    Console(highlight=False).print(table)


def zeros_for(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs of zeros for a benchmark without -i; a dimension of any size becomes 1."""
    return {spec.name: np.zeros([d if d >= 0 else 1 for d in spec.shape],
                                np.dtype(spec.dtype)) for spec in specs}


# --- the rest ------------------------------------------------------------------------------


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), required=False)
def completion(shell: str | None) -> None:
    """Print the shell completion script for SHELL (default: from $SHELL).

    Enable it with, for bash: eval "$(compass completion bash)" in ~/.bashrc.
    """
    from click.shell_completion import get_completion_class

    if shell is None:
        shell = os.path.basename(os.environ.get("SHELL", "bash"))
    cls = get_completion_class(shell)
    if cls is None:
        raise click.UsageError(f"No completion for shell {shell!r}; use bash, zsh or fish.")
    click.echo(cls(main, {}, "compass", "_COMPASS_COMPLETE").source())


@main.command()
@click.option("--samples", default=200, show_default=True, type=click.IntRange(min=1),
              help="How many of the shipped samples to classify.")
@click.option("--deadline", default=60.0, show_default=True,
              type=click.FloatRange(min=1), help="Seconds allowed for each step.")
def demo(samples: int, deadline: float) -> None:
    """Try compassd on this machine, no network and no board needed.

    Starts a compass-tracker and a compass-server with the ONNX backend on 127.0.0.1,
    requests the board, uploads a small handwritten-digit classifier shipped with
    compassd, runs it on held-out samples, prints the accuracy, then stops both daemons.
    """
    from .demo import DemoError, run_demo

    try:
        run_demo(Console(highlight=False), samples=samples, deadline=deadline)
    except DemoError as e:
        click.echo(f"compass: {e}", err=True)
        sys.exit(EXIT_REFUSED)
    except CompassError as e:
        click.echo(f"compass: the demo failed: {e}", err=True)
        sys.exit(EXIT_REFUSED)


def run() -> None:
    """Entry point that never shows a traceback for an interrupted command."""
    try:
        main()
    except KeyboardInterrupt:
        click.echo("compass: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    run()
