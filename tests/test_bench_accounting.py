"""bench/accounting.py runs end to end and prints its whole table (timings are not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "accounting.py"

EXPECTED_ROWS = [
    "history page (50), admin, newest",
    "history page (50), one user, 14 days",
    "history page (50), one device, 7 days back",
    "usage report by user, 7 days, store",
    "usage report by user, 14 days, store",
    "usage report by device, 14 days, store",
    "usage report by user, one user, 14 days, store",
    "usage report by device, one user, 14 days, store",
    "history page (50), one user, memory",
    "usage report by user, 7 days, memory",
    "usage report by user, 14 days, memory",
    "history write of one lease's row (row + per-day sums)",
    "fill the per-day sums from the history (first open after upgrade)",
]


@pytest.mark.slow
def test_quick_bench_prints_every_row_with_value_baseline_ratio_target_verdict() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "history rows: 14 days, 100 users, 50 boards" in lines[0]
    header = next(line for line in lines if line.startswith("measure"))
    assert header.split() == ["measure", "value", "baseline", "ratio", "target", "verdict"]
    rows = lines[lines.index(header) + 2:]
    assert [row[: header.index("value")].strip() for row in rows] == EXPECTED_ROWS
    verdict_at = header.index("verdict")
    assert all(row[verdict_at:].strip() in ("ok", "MISSED", "-") for row in rows)
