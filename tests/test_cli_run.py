"""``compass run``, ``compass bench`` and the rest of the command against a real
``twistd compass-tracker`` and ``twistd compass-server --backend onnx`` on 127.0.0.1.

One tracker and one board serve the whole module (starting them takes about a second);
each command releases its lease when it ends, which the next command relies on. The
model is the demo's digit classifier, shipped in compassd/demo.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from compassd.cli import EXIT_CHECK_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE
from compassd.cli.arrays import assemble_inputs, compare
from compassd.client import TensorSpec, connect_tracker
from compassd.demo import MODEL, load_samples
from tests.helpers import daemon_log, free_port, start_twistd, stop
from tests.test_cli import compass

KEY = "cpu"


# --- the pure parts ------------------------------------------------------------------


def test_compare_passes_within_tolerance_and_reports_the_largest_errors() -> None:
    want = np.array([1.0, 2.0, 4.0], np.float32)
    row = compare(want + np.array([0, 0, 0.002], np.float32), want, rtol=1e-3, atol=0)
    assert row["passed"] and row["reason"] == ""
    assert row["max_abs"] == pytest.approx(0.002, rel=1e-3)
    assert row["max_rel"] == pytest.approx(0.0005, rel=1e-3)


def test_compare_fails_beyond_tolerance_counting_the_values_that_differ() -> None:
    want = np.arange(4, dtype=np.int64)
    row = compare(np.array([0, 1, 2, 5]), want, rtol=0, atol=0)
    assert not row["passed"] and row["reason"] == "1 of 4 values differ"
    assert row["max_abs"] == 2.0


def test_compare_fails_on_a_shape_mismatch_naming_both_shapes() -> None:
    row = compare(np.zeros((2, 3)), np.zeros((3, 2)), rtol=1, atol=1)
    assert not row["passed"] and "(2, 3)" in row["reason"] and "(3, 2)" in row["reason"]


def test_inputs_fill_the_model_order_by_position_by_name_and_from_raw_bytes() -> None:
    specs = [TensorSpec("a", (2,), "float32"), TensorSpec("b", (3,), "int8")]
    raw = np.array([1, 2, 3], np.int8).tobytes()
    by_position = assemble_inputs(
        [(None, "a.npy", np.ones(2, np.float32)), (None, "b.bin", raw)], specs)
    assert list(by_position) == ["a", "b"] and by_position["b"].tolist() == [1, 2, 3]
    by_name = assemble_inputs([("b", "b.bin", raw), (None, "x.npz",
                                                     {"a": np.zeros(2, np.float32)})], specs)
    assert sorted(by_name) == ["a", "b"]


def test_a_raw_input_of_the_wrong_size_is_a_sentence_naming_both_sizes() -> None:
    import click

    specs = [TensorSpec("a", (2,), "float32")]
    with pytest.raises(click.UsageError, match="is 3 bytes .* takes 8"):
        assemble_inputs([(None, "a.bin", b"abc")], specs)


# --- against real daemons --------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracker and one compass-server (onnx backend) in pool "cpu": yields the
    tracker's HOST:PORT. Both are stopped by PID at the end of the module."""
    pytest.importorskip("onnxruntime")
    work = tmp_path_factory.mktemp("board")
    tracker, port = start_twistd("compass-tracker")
    try:
        server, _ = start_twistd(
            "compass-server", "--key", KEY, "--tracker", f"127.0.0.1:{port}",
            "--backend", "onnx", "--workdir", str(work), "--device", "cpu-1")
        try:
            yield f"127.0.0.1:{port}"
        finally:
            assert stop(server) in (0, -15)
            print(daemon_log(server))
            assert "Traceback" not in daemon_log(server)
    finally:
        stop(tracker)
        print(daemon_log(tracker))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "images.npy"
    np.save(path, load_samples(8)[0])
    return path


def run(pool: str, *args: str) -> Result:
    return compass("--tracker", pool, "run", "--key", KEY, "--wait", "30", str(MODEL),
                   *args)


def local_outputs(images: Path) -> list[np.ndarray]:
    """The model's outputs computed here by ONNX Runtime, to compare the board's with."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.load(images)})


def test_run_prints_a_table_of_each_outputs_shape_dtype_and_summary(
    pool: str, images: Path
) -> None:
    result = run(pool, "-i", str(images))
    assert result.exit_code == 0, result.stderr
    assert "probabilities" in result.stdout and "(8, 10)" in result.stdout
    assert "float32" in result.stdout and "int64" in result.stdout
    for column in ("min", "max", "mean"):
        assert column in result.stdout
    for step in ("requesting a device of 'cpu'", "granted: cpu-1", "loaded:",
                 "ran: 1 frame"):
        assert step in result.stderr
    # The first run of the module uploads the model; the board keeps it for later runs.
    assert ("uploaded: digits.onnx" in result.stderr
            or "model cached on the board: digits.onnx" in result.stderr)
    assert "granted" not in result.stdout  # progress goes to stderr, data to stdout


def test_a_second_run_of_the_same_model_says_it_was_cached_on_the_board(
    pool: str, images: Path
) -> None:
    run(pool, "-i", str(images))  # the board keeps the model if it did not yet
    result = run(pool, "-i", str(images))
    assert result.exit_code == 0, result.stderr
    assert "model cached on the board: digits.onnx" in result.stderr
    assert "uploaded:" not in result.stderr
    assert "probabilities" in result.stdout


def test_run_json_matches_onnx_runtime_here_and_o_writes_the_outputs(
    pool: str, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.npz"
    result = run(pool, "-i", str(images), "-o", str(out), "--frames", "2", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [o["name"] for o in report["outputs"]] == ["probabilities", "digit"]
    assert report["outputs"][0]["shape"] == [8, 10]
    assert report["device"] == "cpu-1" and report["frames"] == 2
    assert len(report["seconds"]) == 2 and report["written"] == str(out)
    probabilities, digits = local_outputs(images)
    with np.load(out) as written:
        np.testing.assert_allclose(written["probabilities"], probabilities, rtol=1e-6)
        np.testing.assert_array_equal(written["digit"], digits)
    assert report["outputs"][1]["max"] == float(digits.max())


def test_check_against_the_right_golden_passes_and_exits_0(
    pool: str, images: Path, tmp_path: Path
) -> None:
    golden = tmp_path / "golden.npz"
    probabilities, digits = local_outputs(images)
    np.savez(golden, probabilities=probabilities, digit=digits)
    result = run(pool, "-i", str(images), "--check", str(golden))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("PASS") == 2 and "FAIL" not in result.stdout
    assert "check PASS (2/2 outputs)" in result.stderr


def test_check_against_a_wrong_golden_prints_fail_and_exits_4(
    pool: str, images: Path, tmp_path: Path
) -> None:
    golden = tmp_path / "golden.npz"
    probabilities, digits = local_outputs(images)
    digits[3] = (digits[3] + 1) % 10
    np.savez(golden, probabilities=probabilities + 0.5, digit=digits)
    result = run(pool, "-i", str(images), "--check", str(golden), "--json")
    assert result.exit_code == EXIT_CHECK_FAILED
    check = json.loads(result.stdout)["check"]
    assert not check["passed"]
    rows = {r["name"]: r for r in check["outputs"]}
    assert rows["digit"]["reason"] == "1 of 8 values differ"
    assert rows["probabilities"]["max_abs"] == pytest.approx(0.5, rel=1e-5)
    assert result.stderr.strip().splitlines()[-1] == (
        "compass: check FAILED for 2 of 2 output(s): probabilities, digit.")


def test_check_with_exact_tolerance_and_a_raw_golden_of_all_outputs(
    pool: str, images: Path, tmp_path: Path
) -> None:
    golden = tmp_path / "golden.bin"
    probabilities, digits = local_outputs(images)
    golden.write_bytes(probabilities.tobytes() + digits.tobytes())
    result = run(pool, "-i", str(images), "--check", str(golden), "--rtol", "0",
                 "--atol", "0")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 2


def test_an_input_of_the_wrong_dtype_is_one_sentence_and_exit_1(
    pool: str, tmp_path: Path
) -> None:
    wrong = tmp_path / "ints.npy"
    np.save(wrong, np.zeros((2, 64), np.int32))
    result = run(pool, "-i", str(wrong))
    assert result.exit_code == EXIT_REFUSED
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("compass: ") and "int32" in last and "float32" in last
    assert "Traceback" not in result.stderr


def test_a_key_nobody_serves_is_refused_at_once_naming_the_keys_and_leaves_no_pool(
    pool: str,
) -> None:
    # --wait bounds the test where requests for unknown keys used to queue.
    result = compass("--tracker", pool, "run", "--key", "npu-typo", "--wait", "20",
                     str(MODEL))
    assert result.exit_code == EXIT_REFUSED
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("compass: No device serves key 'npu-typo'")
    assert f"The keys with devices are: {KEY}." in last and "--wait-for-board" in last
    assert "Traceback" not in result.stderr and "queued" not in result.stderr
    summary = json.loads(compass("--tracker", pool, "status", "--json").stdout)
    assert [q["key"] for q in summary["queues"]] == [KEY]


def test_wait_for_board_waits_for_a_key_nobody_serves_then_forgets_it(pool: str) -> None:
    result = compass("--tracker", pool, "run", "--key", "nobody", "--wait-for-board",
                     "--wait", "0.5", str(MODEL))
    assert result.exit_code == EXIT_REFUSED
    assert "No device of key 'nobody' is online at the tracker; waiting" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("compass: ") and "Traceback" not in result.stderr
    assert "0.5" in last or "wait" in last.lower()
    # The request timed out: the tracker keeps no pool for the key.
    summary = json.loads(compass("--tracker", pool, "status", "--json").stdout)
    assert [q["key"] for q in summary["queues"]] == [KEY]


def test_run_with_nothing_listening_is_one_sentence_and_exit_3() -> None:
    result = compass("--tracker", f"127.0.0.1:{free_port()}", "run", "--key", KEY,
                     str(MODEL))
    assert result.exit_code == EXIT_UNREACHABLE
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[-1].startswith("compass: ")
    assert "Traceback" not in result.stderr


def test_a_missing_input_file_is_a_usage_error_before_any_board_is_requested() -> None:
    result = compass("--tracker", f"127.0.0.1:{free_port()}", "run", "--key", KEY,
                     str(MODEL), "-i", "/nonexistent/x.npy")
    assert result.exit_code == 2 and "cannot read /nonexistent/x.npy" in result.stderr


def test_bench_json_reports_the_statistics_over_the_rounds(pool: str, images: Path) -> None:
    result = compass("--tracker", pool, "bench", "--key", KEY, "--wait", "30", str(MODEL),
                     "-i", str(images), "--warmup", "1", "--number", "3", "--repeat", "4",
                     "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["times"]) == 4 and report["number"] == 3
    assert report["min"] <= report["median"] <= report["p90"] <= report["p99"] \
        <= report["max"]
    assert min(report["times"]) == report["min"] > 0
    assert report["throughput"] == pytest.approx(1 / report["mean"])


def test_bench_table_without_inputs_uses_zeros_and_prints_per_run_times(pool: str) -> None:
    result = compass("--tracker", pool, "bench", "--key", KEY, "--wait", "30", str(MODEL),
                     "--number", "2", "--repeat", "2")
    assert result.exit_code == 0, result.stderr
    for column in ("mean", "median", "p90", "p99", "min", "max", "runs/s"):
        assert column in result.stdout
    # the board is free again for the next user
    client = connect_tracker(*pool.split(":")[:1], int(pool.split(":")[1]))
    try:
        assert {d["name"]: d["state"] for d in client.devices()}["cpu-1"] == "free"
    finally:
        client.close()


def test_status_watch_refreshes_the_given_number_of_times(pool: str) -> None:
    result = compass("--tracker", pool, "status", "--watch", "--json", "--interval", "0.1",
                     "--count", "2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert [d["name"] for d in json.loads(lines[1])["devices"]] == ["cpu-1"]


def test_status_watch_table_ends_after_count_refreshes(pool: str) -> None:
    result = compass("--tracker", pool, "status", "--watch", "--interval", "0.1",
                     "--count", "1")
    assert result.exit_code == 0, result.stderr
    assert "cpu-1" in result.stdout and "Ctrl-C stops" in result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script_for_the_shell(shell: str) -> None:
    result = compass("completion", shell)
    assert result.exit_code == 0
    assert "_COMPASS_COMPLETE" in result.stdout


def test_help_epilog_documents_every_exit_code() -> None:
    text = " ".join(compass("--help").stdout.split())
    for code in ("0 success", "1 the tracker or board refused", "2 a usage error",
                 "3 the tracker cannot be reached", "4 --check found", "130 interrupted"):
        assert code in text


def test_version_json_names_the_package_and_protocol_versions() -> None:
    result = compass("version", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["compassd"] and report["protocol"]
