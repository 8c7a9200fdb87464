"""The dashboard's history charts, drawn as SVG on the server.

Server-side SVG needs no JavaScript, no charting library and no build step, and shows
the same in every browser and in a page saved to disk. Each function takes numbers and
returns one C{<svg>} element as text (every name in it escaped).
"""

from __future__ import annotations

import time
from html import escape

from ..history import Summary

_LABEL = 150
_CELL_H = 18
_WIDTH = 720
_BAR = "#2f6fbf"


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _clock(at: float, with_day: bool) -> str:
    return time.strftime("%a %d" if with_day else "%H:%M", time.localtime(at))


def _when(at: float) -> str:
    return time.strftime("%a %H:%M", time.localtime(at))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _empty(title: str, text: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart"'
            f' width="{_WIDTH}" height="40" viewBox="0 0 {_WIDTH} 40">'
            f"<title>{escape(title)}</title>"
            f'<text x="4" y="24" class="note">{escape(text)}</text></svg>')


def heatmap(title: str, rows: dict[str, list[float]], summary: Summary) -> str:
    """Utilisation (0 to 1) per row and time slice: darker is busier; each cell's tooltip
    says which row, when and how busy."""
    if not rows:
        return _empty(title, "No boards and no leases in this window yet.")
    buckets = summary.buckets
    cell_w = (_WIDTH - _LABEL) / buckets
    height = _CELL_H * len(rows) + 24
    width_s = summary.until - summary.since
    with_day = width_s > 86400 * 1.5
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart"'
           f' width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">',
           f"<title>{escape(title)}</title>"]
    slice_s = width_s / buckets
    for r, (name, values) in enumerate(rows.items()):
        y = r * _CELL_H
        out.append(f'<text x="{_LABEL - 6}" y="{y + 13}" text-anchor="end"'
                   f' class="label">{escape(name)}</text>')
        for i, value in enumerate(values):
            x = _LABEL + i * cell_w
            start = summary.since + i * slice_s
            tip = (f"{name}, {_when(start)} to {_when(start + slice_s)}:"
                   f" {_percent(value)} busy")
            out.append(f'<rect x="{x:.1f}" y="{y + 1}" width="{max(cell_w - 1, 0.5):.1f}"'
                       f' height="{_CELL_H - 2}" fill="{_BAR}"'
                       f' fill-opacity="{0.06 + 0.94 * value:.2f}">'
                       f"<title>{escape(tip)}</title></rect>")
    axis_y = len(rows) * _CELL_H + 16
    ticks = 4 if not with_day else 7
    for t in range(ticks + 1):
        at = summary.since + width_s * t / ticks
        x = _LABEL + (_WIDTH - _LABEL) * t / ticks
        anchor = "start" if t == 0 else "end" if t == ticks else "middle"
        out.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="{anchor}"'
                   f' class="axis">{escape(_clock(at, with_day))}</text>')
    out.append("</svg>")
    return "".join(out)


def bars(title: str, values: dict[str, float], unit: str) -> str:
    """One horizontal bar per name, longest first, with its value written at its end."""
    if not values:
        return _empty(title, "Nothing in this window yet.")
    top = max(values.values()) or 1.0
    height = _CELL_H * len(values) + 4
    span = _WIDTH - _LABEL - 90
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart"'
           f' width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">',
           f"<title>{escape(title)}</title>"]
    for r, (name, value) in enumerate(values.items()):
        y = r * _CELL_H
        w = max(1.0, span * value / top)
        text = f"{value:.2f} {unit}"
        out.append(f'<text x="{_LABEL - 6}" y="{y + 13}" text-anchor="end"'
                   f' class="label">{escape(name)}</text>'
                   f'<rect x="{_LABEL}" y="{y + 2}" width="{w:.1f}" height="{_CELL_H - 4}"'
                   f' fill="{_BAR}"><title>{escape(f"{name}: {text}")}</title></rect>'
                   f'<text x="{_LABEL + w + 6:.1f}" y="{y + 13}" class="value">'
                   f"{escape(text)}</text>")
    out.append("</svg>")
    return "".join(out)


def wait_percentiles(title: str, waits: dict[str, dict[str, float]]) -> str:
    """Per key: a bar to the 95th percentile of waiting, a mark at the median, and the
    numbers (median, p95, longest, how many grants)."""
    if not waits:
        return _empty(title, "No request was granted in this window yet.")
    top = max(w["p95"] for w in waits.values()) or 1.0
    height = 22 * len(waits) + 4
    span = _WIDTH - _LABEL - 345
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart"'
           f' width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">',
           f"<title>{escape(title)}</title>"]
    for r, (key, w) in enumerate(waits.items()):
        y = r * 22
        p95 = max(1.0, span * w["p95"] / top)
        p50 = span * w["p50"] / top
        text = (f"median {_duration(w['p50'])}, p95 {_duration(w['p95'])},"
                f" max {_duration(w['max'])}, {w['count']:.0f} grants")
        out.append(f'<text x="{_LABEL - 6}" y="{y + 15}" text-anchor="end"'
                   f' class="label">{escape(key)}</text>'
                   f'<rect x="{_LABEL}" y="{y + 4}" width="{p95:.1f}" height="14"'
                   f' fill="{_BAR}" fill-opacity="0.45"><title>{escape(text)}</title></rect>'
                   f'<rect x="{_LABEL + p50:.1f}" y="{y + 2}" width="3" height="18"'
                   f' fill="{_BAR}"/>'
                   f'<text x="{_LABEL + p95 + 6:.1f}" y="{y + 15}" class="value">'
                   f"{escape(text)}</text>")
    out.append("</svg>")
    return "".join(out)
