"""bench/proxy.py runs end to end and prints its whole table (timings are not judged)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "proxy.py"

EXPECTED_ROWS = [
    "run round trip p50, via proxy",
    "runs/s (1/mean latency), via proxy",
    "upload 4 MiB, via proxy",
    "tensor round trip 4 MiB, via proxy",
]


@pytest.mark.slow
def test_quick_proxy_bench_prints_direct_and_proxied_figures_side_by_side() -> None:
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the bench's daemons share its session
        out, err = proc.communicate()
        pytest.fail(f"bench/proxy.py --quick ran past 120 s:\n{out}\n{err}")
    assert proc.returncode == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("measure"))
    assert header.split() == ["measure", "value", "baseline", "ratio", "target", "verdict"]
    rows = lines[lines.index(header) + 2:]
    assert [row[: header.index("value")].strip() for row in rows] == EXPECTED_ROWS
    verdict_at = header.index("verdict")
    assert all(row[verdict_at:].strip() in ("ok", "MISSED") for row in rows)
