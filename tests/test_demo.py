"""``compass demo`` end to end, and the model and samples it ships."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from compassd.demo import MODEL, SAMPLES, load_samples
from tests.helpers import ROOT, daemon_env
from tests.test_cli import compass

DEADLINE = 90.0


def test_the_shipped_model_and_samples_are_small_package_data() -> None:
    assert MODEL.stat().st_size + SAMPLES.stat().st_size < 300_000
    images, labels = load_samples()
    assert images.shape == (200, 64) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(set(labels.tolist())) == list(range(10))


def test_the_shipped_model_classifies_the_samples_well_here() -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    images, labels = load_samples()
    probabilities, digits = session.run(None, {"image": images})
    assert (digits == labels).mean() > 0.9
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), digits)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_runs_the_model_on_its_own_daemons_and_stops_them() -> None:
    pytest.importorskip("onnxruntime")
    env = daemon_env()
    env.pop("COLUMNS", None)  # a pipe, as in CI logs: nothing may be cut or wrapped
    proc = subprocess.Popen(
        [sys.executable, "-c", "from compassd.cli import run; run()", "demo", "--samples",
         "100", "--deadline", "30"],
        cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    accuracy = re.search(r"accuracy: (\d+)/100 = ([\d.]+)%", text)
    assert accuracy and int(accuracy.group(1)) >= 90, text
    for step in ("Starting compass-tracker", "Starting compass-server", "queued: request",
                 "granted: demo-cpu-1", "uploaded: digits.onnx", "loaded:", "Running",
                 "probabilities"):
        assert step in text, step
    assert re.search(r"^3\. Requesting .*: connect_tracker\('127\.0\.0\.1', \d+\)"
                     r"\.request\('demo', wait_for_board=True\)$", text, re.M), text
    assert re.search(r"^ +loaded: digits\.onnx \(image .*\) -> \(probabilities .*,"
                     r" digit int64 \(\?,\)\)$", text, re.M), text
    started = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"(tracker|board server) listening on 127\.0\.0\.1:\d+ \(pid (\d+)\)", text)}
    stopped = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"stopped compass-(tracker|server) \(pid (\d+)", text)}
    assert started == {"tracker": stopped["tracker"], "board server": stopped["server"]}
    assert all(_gone(pid) for pid in stopped.values())
    assert "Traceback" not in text + err.decode()


def test_demo_without_onnxruntime_says_what_to_install_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    result = compass("demo")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'compassd[onnx]'" in lines[0]
    assert "Starting" not in result.stdout  # nothing was started


def test_the_demo_uses_the_client_library_and_presentation_not_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, compassd.demo;"
         " print(' '.join(m for m in sys.modules if m.startswith('compassd')))"],
        cwd=str(ROOT), env=daemon_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "compassd.presentation" in loaded and "compassd.client" in loaded
    assert not [m for m in loaded if m == "compassd.cli" or m.startswith("compassd.cli.")]
