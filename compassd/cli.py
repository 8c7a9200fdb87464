"""The ``compass`` command: look at and administer a compassd tracker.

Exit codes: 0 success; 1 the tracker refused or failed (one sentence on stderr);
2 a usage error; 3 the tracker cannot be reached.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .client import CompassError, Tracker, TrackerUnreachable, connect_tracker, parse_address

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3

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
    return connect_tracker(host, port, ctx.obj["token"], user=ctx.obj["user"])


def _run(ctx: click.Context, action: Callable[[Tracker], Any]) -> Any:
    """Connect, run C{action}, close; turn every compassd error into one sentence."""
    try:
        tracker = _connect(ctx)
        try:
            return action(tracker)
        finally:
            tracker.close()
    except TrackerUnreachable as e:
        click.echo(f"compass: {e}", err=True)
        ctx.exit(EXIT_UNREACHABLE)
    except CompassError as e:
        click.echo(f"compass: {e}", err=True)
        ctx.exit(EXIT_REFUSED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tracker", metavar="HOST:PORT", help=TRACKER_HELP)
@click.option(
    "--token",
    envvar="COMPASS_TOKEN",
    help="Your token, if the tracker has a tokens file. Default: COMPASS_TOKEN.",
)
@click.option("--user", envvar="COMPASS_USER", help="Name to show when no token is used.")
@click.pass_context
def main(ctx: click.Context, tracker: str | None, token: str | None, user: str | None) -> None:
    """compass: share NPU boards through a compassd tracker.

    Look at who holds which board with `compass status`; admins drain boards for
    maintenance with `compass drain DEVICE`.
    """
    ctx.obj = {"tracker": tracker, "token": token, "user": user}


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
    console.print(devices)

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
    console.print(queues)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.option("--waiting", default=20, show_default=True,
              help="Waiting requests to show per key in the table (--json shows all).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, waiting: int) -> None:
    """Show every device (state, holder, lease left) and every queue (who waits, where).

    With --json: {"devices": [...], "queues": [...]}; each queue has key, free, total,
    count and the list "waiting" in queue order.
    """
    summary = _run(ctx, lambda t: t.summary(None if as_json else waiting))
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        render_status(summary, Console(), waiting)


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
def version() -> None:
    """Print compassd's version and the protocol versions it speaks."""
    from .protocol import SUPPORTED_VERSIONS

    click.echo(f"compassd {__version__} (protocol {', '.join(map(str, SUPPORTED_VERSIONS))})")


@main.command()
@click.argument("user")
@click.option("--roles", default="client", show_default=True,
              help="Comma-separated roles: client, board, admin.")
@click.option("--keys", default="*", show_default=True,
              help="Comma-separated patterns of the device keys USER may request.")
def token(user: str, roles: str, keys: str) -> None:
    """Make a new token for USER: prints the token (give it to the user) and the line to
    add to the tracker's tokens file (only its hash is stored there)."""
    from .tracker.access import hash_token, new_token

    secret = new_token()
    click.echo(f"token: {secret}")
    click.echo(f"tokens file line: {hash_token(secret)} user={user} roles={roles} keys={keys}")


def run() -> None:
    """Entry point that never shows a traceback for an interrupted command."""
    try:
        main()
    except KeyboardInterrupt:
        click.echo("compass: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
