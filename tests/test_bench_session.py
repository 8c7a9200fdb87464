"""bench/session.py runs end to end and prints its whole table (timings are not judged)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "session.py"

EXPECTED_ROWS = [
    "session open p50 (warm spare)",
    "small run p50 (blocking Model.run, 16 B identity graph)",
    "upload 4 MiB (hashed while sent)",
    "upload 4 MiB model, first time (hashed while sent)",
    "upload 4 MiB model, first time: CPU per MiB, client+board",
    "upload 4 MiB model, first time: most this machine allows",
    "upload 4 MiB model, first time, hashed first (older board)",
    "upload 4 MiB model again, unchanged (cache hit)",
    "sha256 of 4 MiB (each end of an upload)",
    "tensor round trip 4 MiB float32",
    "executor handoff 4 MiB (write+Execute+read)",
    "arena copies 4 MiB (write+read)",
    "executor handoff 4 MiB, onnx backend (IO binding)",
]

try:
    import onnxruntime  # noqa: F401
except ImportError:
    # Debian 12's python has no onnxruntime: the bench says so in the row's label.
    EXPECTED_ROWS[-1] += ": no onnx package"


@pytest.mark.slow
def test_quick_session_bench_prints_every_row_with_value_baseline_ratio_target_verdict(
) -> None:
    timeout = 120.0
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The daemons and children share the bench's session: end them by its group id.
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench/session.py --quick ran past {timeout:g} s:\n{out}\n{err}")
    assert proc.returncode == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("measure"))
    assert header.split() == ["measure", "value", "baseline", "ratio", "target", "verdict"]
    rows = lines[lines.index(header) + 2 :]
    measures = [row[: header.index("value")].strip() for row in rows]
    assert measures == EXPECTED_ROWS
    verdict_at = header.index("verdict")
    assert all(row[verdict_at:].strip() in ("ok", "MISSED", "-") for row in rows)
