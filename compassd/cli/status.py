"""``compass status`` and ``compass devices``: the tracker's devices and queues as tables
(or JSON), once or refreshed in place with ``--watch``."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console, Group
from rich.table import Table

from ..client import Tracker
from ..presentation import console as new_console
from ..presentation import duration, people_count
from ._tracker import with_tracker

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
    return Group(devices_table(summary["devices"]), queues_table(summary["queues"]))


def devices_table(rows: list[dict[str, Any]]) -> Table:
    """The Devices table (what C{compass devices} prints)."""
    devices = Table(title="Devices", title_justify="left", expand=False)
    for column in ("key", "device", "address", "state", "holder", "held for", "lease left",
                   "info"):
        devices.add_column(column)
    for d in sorted(rows, key=lambda d: (d["key"], d["name"])):
        state = d["state"]
        if d["health"] != "ok":
            state += f" ({d['health']})"
        info = " ".join(d["info"] + [f"#{t}" for t in d["tags"]])
        devices.add_row(
            d["key"], d["name"], d["address"],
            f"[{_STATE_STYLE.get(d['state'], '')}]{state}[/]",
            d["holder"] or "-", duration(d["held_for"]), duration(d["lease_left"]), info,
        )
    if not rows:
        devices.add_row("-", "no devices registered", "", "", "", "", "", "")
    return devices


def queues_table(summary_queues: list[dict[str, Any]]) -> Table:
    """The Queues table: each pool's free and total devices and who waits in order."""
    queues = Table(title="Queues", title_justify="left")
    for column in ("key", "free/total", "position", "request", "user", "priority", "waited",
                   "why"):
        queues.add_column(column)
    for q in summary_queues:
        free = f"{q['free']}/{q['total']}"
        rows = q["waiting"]
        if not rows:
            queues.add_row(q["key"], free, "-", "nobody waiting", "", "", "", "")
        for i, w in enumerate(rows):
            queues.add_row(
                q["key"] if i == 0 else "", free if i == 0 else "", str(w["position"] + 1),
                w["request"], w["user"], str(w["priority"]), duration(w["waited"]),
                w.get("why") or "",
            )
        if q["count"] > len(rows):
            queues.add_row("", "", "...", f"and {q['count'] - len(rows)} more", "", "", "",
                           "")
    if not summary_queues:
        queues.add_row("-", "", "", "no queues", "", "", "", "")
    return queues


@click.command()
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
    count and the list "waiting" in queue order, each with its "position" counted from 1
    (1 is next in line). With --watch the tables refresh in
    place (with --json, one JSON object per line per refresh) until Ctrl-C.
    """
    if not watch:
        summary = with_tracker(ctx, lambda t: _summary(t, None if as_json else waiting))
        if as_json:
            click.echo(json.dumps(people_count(summary), indent=2, sort_keys=True))
        else:
            console = new_console()
            if "trackers" in summary:
                console.print(trackers_line(summary["trackers"]))
            render_status(summary, console, waiting)
        return
    with_tracker(ctx, lambda t: _watch_status(t, t.address, as_json, waiting, interval,
                                              count))


def _summary(tracker: Tracker, waiting: int | None) -> dict[str, Any]:
    """The status; with "trackers" (which is active, what the others are) when the
    client was given several trackers or was redirected to the active one."""
    summary = tracker.summary(waiting)
    if len(tracker.trackers) > 1 or tracker.redirected:
        summary["trackers"] = tracker.tracker_states()
    return summary


def trackers_line(rows: list[dict[str, str]]) -> str:
    """One line: C{Trackers: a:9190 active; b:9190 standby (redirects to a:9190)}."""
    parts = []
    for row in rows:
        text = f"{row['address']} {row['state']}"
        if row["state"] == "standby":
            text += f" (redirects to {row.get('active') or 'nobody yet'})"
        elif row["state"] == "unreachable":
            text += f" ({row.get('detail', '').rstrip('.')})"
        elif row is not rows[0]:
            text += " too: it does not share the first one's database"
        parts.append(text)
    return "Trackers: " + "; ".join(parts)


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
                click.echo(json.dumps(people_count(tracker.summary(None)), sort_keys=True))
                shown += 1
            return
        with Live(console=new_console(), auto_refresh=False) as live:
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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def devices(ctx: click.Context, as_json: bool) -> None:
    """List the devices the tracker knows."""
    rows = with_tracker(ctx, lambda t: t.devices())
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        new_console().print(devices_table(rows))
