"""bench/tracker.py runs end to end and prints its whole table (timings are not judged)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "tracker.py"

EXPECTED_ROWS = [
    "grant latency p50, 1 client",
    "grant latency p50, 2 clients",
    "grant latency p99, 2 clients",
    "cycles/s, 2 clients",
    "server CPU per cycle, 2 clients",
    "tracker RSS after 2-client run",
    "cycles/s, 2 clients, --metrics --http, a page open",
    "server CPU per cycle, 2 clients, --metrics --http, a page open",
    "cycles/s, 2 clients, SQLite store",
    "grant latency p50, 2 clients, SQLite store",
    "per-grant core cost, 10 queued",
    "per-grant core cost, 100 queued",
    "per-grant core cost, 1000 queued",
    "RSS, 50 devices + 999 queued",
    "all positions, 999 queued",
    "position push after 1 grant",
]


def _run_quick(timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The bench's children (tracker, clients) share its session: end them all by
        # the bench's process group id.
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench/tracker.py --quick ran past {timeout:g} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_quick_bench_prints_every_row_with_value_baseline_ratio_target_verdict() -> None:
    result = _run_quick()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("measure"))
    assert header.split() == ["measure", "value", "baseline", "ratio", "target", "verdict"]
    rows = lines[lines.index(header) + 2 :]
    measures = [row[: header.index("value")].strip() for row in rows]
    assert measures == EXPECTED_ROWS
    verdict_at = header.index("verdict")
    assert all(row[verdict_at:].strip() in ("ok", "MISSED", "-") for row in rows)
