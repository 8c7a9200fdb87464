"""The dashboard's HTML, rendered on the server.

The whole page is readable without JavaScript: every table is filled in here. The
script only keeps the tables live (it swaps in the same fragments, sent as server-sent
events) and adds the confirmation and the token header to admin actions. Every value
that came from a user, a board or a token file is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..history import Summary
from . import charts


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _cell(value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape('' if value is None else str(value))}</td>"


def _button(action: str, label: str, **data: str) -> str:
    fields = "".join(f' data-{name}="{escape(value)}"' for name, value in data.items())
    return (f'<button type="button" class="action" data-action="{action}"{fields}>'
            f"{escape(label)}</button>")


def board_rows(state: dict[str, Any], admin: bool) -> str:
    """The rows of the boards table."""
    if not state["boards"]:
        columns = 9 if admin else 8
        return (f'<tr class="empty"><td colspan="{columns}">No board has registered with'
                " this tracker yet.</td></tr>")
    rows = []
    for board in state["boards"]:
        name = board["name"]
        left = board["lease_left"]
        left_cell = (f'<td class="left" data-left="{left:.1f}">{_duration(left)}</td>'
                     if left is not None else "<td></td>")
        cells = [
            _cell(name, "name"), _cell(board["key"]),
            f'<td class="state state-{escape(board["state"])}">{escape(board["state"])}</td>',
            _cell(board["holder"], "holder"), _cell(board["lease"]), left_cell,
            _cell(board["health"]), _cell(board["last_error"] or ""),
        ]
        if admin:
            actions = []
            if board["state"] == "draining":
                actions.append(_button("undrain", "Undrain", device=name))
            elif board["state"] != "offline":
                actions.append(_button("drain", "Drain", device=name))
            if board["lease"]:
                actions.append(_button("kick", "Kick", lease=board["lease"], device=name,
                                       holder=board["holder"] or ""))
            cells.append(f'<td class="actions">{"".join(actions)}</td>')
        rows.append(f'<tr data-board="{escape(name)}">{"".join(cells)}</tr>')
    return "".join(rows)


def queue_rows(state: dict[str, Any]) -> str:
    """The rows of the queues table (one per key)."""
    if not state["queues"]:
        return '<tr class="empty"><td colspan="4">No keys yet.</td></tr>'
    return "".join(
        f'<tr data-key="{escape(q["key"])}">{_cell(q["key"], "name")}{_cell(q["free"])}'
        f'{_cell(q["total"])}{_cell(q["waiting"])}</tr>'
        for q in state["queues"])


def waiting_rows(state: dict[str, Any]) -> str:
    """The rows of the waiting-requests table, every key's queue in order."""
    rows = []
    for queue in state["queues"]:
        for w in queue["shown"]:
            rows.append(
                f'<tr data-request="{escape(w["request"])}">{_cell(w["key"])}'
                f'{_cell(w["position"])}{_cell(w["request"])}{_cell(w["user"], "user")}'
                f'{_cell(w["priority"])}'
                f'<td class="waited" data-waited="{w["waited"]:.1f}">{_duration(w["waited"])}'
                f'</td>{_cell(w["why"], "why")}</tr>')
        hidden = queue["waiting"] - len(queue["shown"])
        if hidden > 0:
            rows.append(f'<tr class="more"><td colspan="7">{hidden} more waiting for'
                        f' {escape(queue["key"])}.</td></tr>')
    if not rows:
        return '<tr class="empty"><td colspan="7">Nobody is waiting.</td></tr>'
    return "".join(rows)


def fragments(state: dict[str, Any], admin: bool) -> dict[str, str]:
    """The live parts of the page, by the id of the C{tbody} each one fills."""
    return {"board-rows": board_rows(state, admin), "queue-rows": queue_rows(state),
            "waiting-rows": waiting_rows(state)}


def history(day: Summary, week: Summary, source: str) -> str:
    """The history section: utilisation, waits and board-hours over a day and a week."""
    parts = [f'<p class="note">{escape(source)}</p>']
    for label, summary in (("last 24 hours", day), ("last 7 days", week)):
        parts.append(f"<h3>Utilisation per board, {label}</h3>")
        parts.append(charts.heatmap(f"Utilisation per board, {label}", summary.by_device,
                                    summary))
        parts.append(f"<h3>Utilisation per key, {label}</h3>")
        parts.append(charts.heatmap(f"Utilisation per key, {label}", summary.by_key, summary))
        parts.append(f"<h3>Wait before a grant, {label}</h3>")
        parts.append(charts.wait_percentiles(f"Wait before a grant, {label}", summary.waits))
        parts.append(f"<h3>Board-hours per user, {label}</h3>")
        parts.append(charts.bars(f"Board-hours per user, {label}", summary.hours_by_user,
                                 "h"))
    return "".join(parts)


def _head(title: str) -> str:
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title>"
            '<link rel="stylesheet" href="/static/dashboard.css">'
            '<script src="/static/dashboard.js" defer></script></head>')


def dashboard(state: dict[str, Any], user: str, roles: list[str], admin: bool,
              history_html: str, tracker: str, signed_in: bool) -> str:
    """The whole dashboard page."""
    rendered = fragments(state, admin)
    admin_head = "<th>Actions</th>" if admin else ""
    sign_out = ('<form method="post" action="/logout" class="inline">'
                '<button type="submit">Sign out</button></form>') if signed_in else ""
    admin_note = ('<noscript><p class="note">Drain, undrain and kick need JavaScript: they'
                  " ask for a confirmation and send your token in a header.</p></noscript>"
                  if admin else "")
    return (
        _head(f"compassd: {tracker}")
        + f'<body data-admin="{"1" if admin else "0"}">'
        + f'<header><h1>compassd <span class="where">{escape(tracker)}</span></h1>'
        + f'<p class="who">Signed in as <strong id="user">{escape(user)}</strong>'
        + f' ({escape(", ".join(roles))}) {sign_out}</p>'
        + '<p id="live" class="live" role="status">Static page: reload to refresh.</p>'
        + "</header>"
        + '<p id="notice" class="notice" role="alert" hidden></p>'
        + "<main><section><h2>Boards</h2>" + admin_note
        + '<table id="boards"><thead><tr><th>Board</th><th>Key</th><th>State</th>'
        + "<th>Holder</th><th>Lease</th><th>Lease left</th><th>Health</th>"
        + f"<th>Last error</th>{admin_head}</tr></thead>"
        + f'<tbody id="board-rows">{rendered["board-rows"]}</tbody></table></section>'
        + '<section><h2>Queues</h2><table id="queues"><thead><tr><th>Key</th>'
        + "<th>Free</th><th>Online</th><th>Waiting</th></tr></thead>"
        + f'<tbody id="queue-rows">{rendered["queue-rows"]}</tbody></table>'
        + '<h3>Who waits</h3><table id="waiting"><thead><tr><th>Key</th><th>Position</th>'
        + "<th>Request</th><th>User</th><th>Priority</th><th>Waiting for</th><th>Why</th>"
        + f'</tr></thead><tbody id="waiting-rows">{rendered["waiting-rows"]}</tbody>'
        + "</table></section>"
        + f'<section id="history"><h2>History</h2>{history_html}</section></main>'
        + "</body></html>"
    )


def login(tracker: str, message: str = "") -> str:
    """The sign-in page: one field for the same token the CLI uses."""
    said = f'<p class="notice" role="alert">{escape(message)}</p>' if message else ""
    return (
        _head(f"compassd: sign in to {tracker}")
        + f'<body><header><h1>compassd <span class="where">{escape(tracker)}</span></h1>'
        + "</header><main>" + said
        + '<form id="login" method="post" action="/login"><p><label for="token">Token'
        + " (the one you give <code>compass --token</code> or COMPASS_TOKEN)</label></p>"
        + '<p><input id="token" name="token" type="password" autocomplete="current-password"'
        + ' required size="50"> <button type="submit">Sign in</button></p>'
        + '<p class="note">Clients see the boards and queues; admins may also drain,'
        + " undrain and kick.</p></form></main></body></html>"
    )
