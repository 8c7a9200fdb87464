"""What every command shares with the shell: the exit codes, the tracker's address, and
one call to the tracker with each compassd error turned into one sentence and a code."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from ..addresses import DEFAULT_PORT, parse_address, split_trackers
from ..client import CompassError, Tracker, TrackerUnreachable, connect_tracker
from ..tls import TLSFailed

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
    "The tracker as HOST:PORT, or both trackers of a standby pair separated by a comma"
    " (a:9190,b:9190: the active one is used). Default: the COMPASS_TRACKER environment"
    " variable, then 127.0.0.1:9190."
)


def tracker_address(value: str | None) -> str:
    """The --tracker value, else COMPASS_TRACKER, else the local default."""
    return value or os.environ.get("COMPASS_TRACKER") or "127.0.0.1:9190"


def _connect(ctx: click.Context) -> Tracker:
    address = tracker_address(ctx.obj["tracker"])
    try:
        addresses = split_trackers(address)
        host, port = parse_address(addresses[0])
        for other in addresses[1:]:
            parse_address(other)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--tracker") from e
    tls = ctx.obj.get("tls") or {}
    where: str | list[str] = host
    if len(addresses) > 1:  # a standby pair; an address without a port takes 9190
        where, port = addresses, DEFAULT_PORT
    return connect_tracker(where, port, ctx.obj["token"], user=ctx.obj["user"],
                           tls=bool(tls.get("tls") or tls.get("ca") or tls.get("cert")),
                           ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"))


def with_tracker(ctx: click.Context, action: Callable[[Tracker], Any]) -> Any:
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
