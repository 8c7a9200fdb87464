"""What every bench shares: timing loops, percentiles, the table it prints, and the
units it prints in.

Each row is (measure, value, baseline, ratio, target, verdict): the baseline is measured
in the same run (raw TCP, memcpy, ...), so the ratio means something on any machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence


def percentile(values: list[float], q: float) -> float:
    """The C{q}-th percentile (nearest rank) of C{values}; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def timed(seconds: float, at_least: int, at_most: int, once: Callable[[], object]
          ) -> list[float]:
    """Durations of C{once()}, repeated for C{seconds} (between the two counts)."""
    times: list[float] = []
    end = time.monotonic() + seconds
    while len(times) < at_most and (len(times) < at_least or time.monotonic() < end):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us"


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def mbs(rate: float) -> str:
    return f"{rate / 1e6:.0f} MB/s"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and not math.isnan(base) else "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    header = ("measure", "value", "baseline", "ratio", "target", "verdict")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
