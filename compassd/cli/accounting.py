"""``compass usage`` and ``compass history``: where the board time went, like Slurm's
``sshare``/``sreport`` and ``sacct``. A user who is not an admin sees their own rows; an
admin sees everyone's and resets fair share's memory with ``compass usage --reset``."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from typing import Any

import click
from rich.table import Table

from ..client import Tracker
from ..presentation import console as new_console
from ..presentation import duration
from ..protocol.accounting import GROUPINGS
from ._tracker import with_tracker

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_span(text: str) -> float:
    """Seconds in a span such as C{7d}, C{12h}, C{30m}, C{90s}, C{2w} or C{3600}
    (seconds); raise C{ValueError} with a sentence for anything else."""
    found = _SPAN.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a span of time: say 7d, 12h, 30m, 90s or 2w.")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def span_text(seconds: float) -> str:
    """A span the way L{parse_span} reads it: the largest unit that divides it."""
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"


class _Span(click.ParamType):
    name = "SPAN"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_span(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


SPAN = _Span()

USAGE_COLUMNS = ("key", "name", "leases", "hours", "unserved", "wait_p50", "wait_p95",
                 "share", "decayed", "order", "of")


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def usage_table(report: dict[str, Any], by: str) -> Table:
    """The usage report as a table."""
    table = Table(title=f"Usage by {by}, last {span_text(report['since'])}",
                  title_justify="left")
    for column in ("key", by, "leases", "board-hours", "unserved", "wait p50", "wait p95",
                   "share", "decayed board-hours", "order"):
        table.add_column(column, justify="left" if column in ("key", by) else "right")
    for row in report["rows"]:
        order = "-" if row.get("order") is None else f"{row['order']} of {row['of']}"
        share = row.get("share")
        table.add_row(row["key"], row["name"], str(row["leases"]), _hours(row["hours"]),
                      str(row["unserved"]), duration(row.get("wait_p50")),
                      duration(row.get("wait_p95")),
                      "-" if share is None else f"{share:g}", _hours(row.get("decayed")),
                      order)
    if not report["rows"]:
        table.add_row("-", "no usage in this window", *[""] * 8)
    return table


def standing_sentences(report: dict[str, Any], me: str) -> list[str]:
    """What the report means for C{me}'s place in each key's queue."""
    lines = []
    for row in report["rows"]:
        if row["name"] != me or row.get("order") is None:
            continue
        ahead = row["order"] - 1
        others = "nobody has" if ahead == 0 else (
            "1 user has" if ahead == 1 else f"{ahead} users have")
        lines.append(
            f"In {row['key']} you come {_ordinal(row['order'])} of {row['of']} at one"
            f" priority: {others} used less board time per share lately"
            f" (you: {_hours(row['decayed'])} decayed board-hours, share {row['share']:g}).")
    return lines


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})


@click.command()
@click.option("--key", metavar="KEY", help="Only this device key.")
@click.option("--user", "who", metavar="USER",
              help="Only this user (an admin may name anyone; others see only themselves).")
@click.option("--since", type=SPAN, default="7d", show_default=True,
              help="The window: 7d, 12h, 30m, 2w, or seconds.")
@click.option("--by", type=click.Choice(GROUPINGS), default="user", show_default=True,
              help="One row per user, account, key or device (and key).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV rows for spreadsheets.")
@click.option("--reset", metavar="[USER]", is_flag=False, flag_value="*", default=None,
              help="Admin: forget USER's decayed usage (everyone's without USER), so fair"
              " share starts them from nothing. Audited.")
@click.pass_context
def usage(ctx: click.Context, key: str | None, who: str | None, since: float, by: str,
          as_json: bool, as_csv: bool, reset: str | None) -> None:
    """Board time used: leases, board-hours and waits in the window, and fair share's
    decayed board-hours, share and order (1 goes first at one priority), by user,
    account, key or device. Without admin rights you see your own rows and your place.

    With --json: {"rows": [...], "half_life": s, "since": s, "history": where from};
    each row has key, name, leases, hours, unserved, wait_p50, wait_p95 (seconds),
    share, decayed (board-hours), order and of.
    """
    if as_json and as_csv:
        raise click.UsageError("Choose one of --json and --csv.")
    if reset is not None:
        target = None if reset == "*" else reset
        keys = with_tracker(ctx, lambda t: t.reset_usage(target))
        whose = "Everyone's" if target is None else f"{target}'s"
        if as_json:
            click.echo(json.dumps({"user": target, "keys": keys}))
        elif keys:
            click.echo(f"{whose} fair-share usage is forgotten on {', '.join(keys)}.")
        else:
            click.echo(f"{whose} fair-share usage: there was none on record; nothing"
                       " changed.")
        return

    def report(t: Tracker) -> tuple[dict[str, Any], str]:
        return t.usage(key, who, by, since), t.user

    found, me = with_tracker(ctx, report)
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    if as_csv:
        _csv(found["rows"], USAGE_COLUMNS)
        return
    console = new_console()
    console.print(usage_table(found, by))
    if found["half_life"] > 0:
        console.print(f"Decayed board-hours halve every {span_text(found['half_life'])};"
                      " at one priority the least per share goes first.")
    else:
        console.print("Fair share by usage is off (half-life 0): users take turns.")
    console.print(f"Leases and waits from the tracker's {found['history']}.")
    if by == "user":
        for line in standing_sentences(found, me):
            console.print(line)


HISTORY_COLUMNS = ("id", "kind", "user", "key", "device", "request", "priority",
                   "requested_at", "granted_at", "ended_at", "outcome", "detail")


def history_table(found: dict[str, Any], here_now: float) -> Table:
    """The history rows as a table, times in this machine's local time."""
    table = Table(title="History (newest first)", title_justify="left")
    for column in ("lease/request", "user", "key", "device", "requested", "waited", "held",
                   "ended"):
        table.add_column(column, justify="right" if column in ("waited", "held") else "left")
    offset = here_now - found.get("now", here_now)
    for row in found["rows"]:
        requested = time.strftime("%Y-%m-%d %H:%M:%S",
                                  time.localtime(row["requested_at"] + offset))
        granted = row.get("granted_at")
        waited = (granted if granted is not None else row["ended_at"]) - row["requested_at"]
        held = "-" if granted is None else duration(row["ended_at"] - granted)
        table.add_row(row["id"], row["user"], row["key"], row.get("device") or "-",
                      requested, duration(waited), held, row["outcome"])
    if not found["rows"]:
        table.add_row("-", "no history in this window", *[""] * 6)
    return table


@click.command()
@click.option("--user", "who", metavar="USER",
              help="Only this user's rows (an admin may name anyone; others see only"
              " their own).")
@click.option("--device", metavar="DEVICE", help="Only leases of this device.")
@click.option("--key", metavar="KEY", help="Only this device key.")
@click.option("--since", type=SPAN, default=None,
              help="Only rows that ended in this window: 7d, 12h, 30m, 2w, or seconds."
              " Default: all the tracker has.")
@click.option("--limit", type=click.IntRange(min=1, max=100_000), default=50,
              show_default=True, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV rows for spreadsheets.")
@click.pass_context
def history(ctx: click.Context, who: str | None, device: str | None, key: str | None,
            since: float | None, limit: int, as_json: bool, as_csv: bool) -> None:
    """Past leases and requests that ended unserved, newest first: who, which key and
    device, when requested, how long it waited and held, how it ended. Without admin
    rights you see your own.

    With --json: {"rows": [...], "more": bool, "now": tracker time, "history": where
    from}; times are the tracker's Unix seconds.
    """
    if as_json and as_csv:
        raise click.UsageError("Choose one of --json and --csv.")
    found = with_tracker(ctx, lambda t: t.history(who, device, key, since, limit))
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    if as_csv:
        _csv(found["rows"], HISTORY_COLUMNS)
        return
    console = new_console()
    console.print(history_table(found, time.time()))
    note = f"From the tracker's {found.get('history', 'memory')}."
    if found["more"]:
        note += f" Older rows exist: raise --limit (now {limit}) or narrow --since."
    console.print(note)
