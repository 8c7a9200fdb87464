"""bench/smallrun.py runs end to end and prints a stamp for every hop of a small run
(timings are not judged)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "smallrun.py"

sys.path.insert(0, str(ROOT / "bench"))
from smallrun import labels  # noqa: E402


@pytest.mark.slow
def test_quick_smallrun_bench_prints_every_segment_of_a_run() -> None:
    timeout = 120.0
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench/smallrun.py --quick ran past {timeout:g} s:\n{out}\n{err}")
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("small run (16-byte identity graph"), out
    whole = int(lines[0].split(" runs, ")[1].split()[0])
    assert whole > 0, out  # some runs had a stamp from every process on every hop
    header = next(line for line in lines if line.startswith("segment"))
    rows = lines[lines.index(header) + 2: lines.index(header) + 2 + len(labels())]
    p50_at = header.index("p50 us")
    assert [row[:p50_at].strip() for row in rows] == labels()
    for row in rows:
        p50, p90, cpu = row[p50_at:].split()
        # a wire segment may be below zero: the reader can wake before the writer's
        # send() returns and stamps
        assert float(p90) >= float(p50)
        # the segments a single thread spans have its CPU time; the others say "-"
        assert cpu == "-" or float(cpu) >= 0
    assert lines[-1].startswith("sums of p50s: client ")
