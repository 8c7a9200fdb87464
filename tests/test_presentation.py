"""compassd.presentation: how results and steps are written, shared by the CLI and the demo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from compassd.presentation import (
    Steps,
    duration,
    ms,
    number_text,
    outputs_table,
    place,
    size_text,
    summarize,
    timing_stats,
)


def test_duration_uses_the_two_largest_units_and_a_dash_for_none() -> None:
    assert duration(None) == "-"
    assert duration(-3) == "0s"
    assert duration(59.9) == "59s"
    assert duration(60) == "1m00s"
    assert duration(3599) == "59m59s"
    assert duration(3600 + 5 * 60 + 59) == "1h05m"


def test_size_text_is_bytes_below_a_kib_then_binary_units_up_to_gib() -> None:
    assert size_text(0) == "0 bytes"
    assert size_text(1023) == "1023 bytes"
    assert size_text(1024) == "1.0 KiB"
    assert size_text(3 * 1024 * 1024 // 2) == "1.5 MiB"
    assert size_text(5 * 1024 ** 3) == "5.0 GiB"
    assert size_text(2048 * 1024 ** 3) == "2048.0 GiB"  # no unit past GiB


def test_numbers_and_milliseconds_are_written_compactly() -> None:
    assert number_text(None) == "-"
    assert number_text(1 / 3) == "0.333333"
    assert number_text(1234567.0) == "1.23457e+06"
    assert ms(0.00125) == "1.250 ms"
    assert ms(2) == "2000.000 ms"


def test_place_counts_from_one_next_in_line_first() -> None:
    assert place(0) == "position 1 (next in line)"
    assert place(3) == "position 4 (3 ahead)"


def test_summarize_gives_min_max_mean_and_none_for_empty_arrays() -> None:
    assert summarize(np.array([[1, 5], [3, 3]], np.int8)) == {
        "shape": [2, 2], "dtype": "int8", "min": 1.0, "max": 5.0, "mean": 3.0}
    assert summarize(np.zeros((0, 4), np.float32))["mean"] is None


def test_summarize_gives_none_for_values_that_are_not_finite_or_not_numbers() -> None:
    row = summarize(np.array([1.0, np.inf], np.float32))
    assert row["min"] == 1.0 and row["max"] is None and row["mean"] is None
    assert summarize(np.array(["a", "b"]))["min"] is None


def test_timing_stats_are_per_run_seconds_and_throughput_from_the_mean() -> None:
    stats = timing_stats([0.001, 0.002, 0.003, 0.004])
    assert stats["mean"] == pytest.approx(0.0025)
    assert stats["median"] == pytest.approx(0.0025)
    assert stats["min"] == 0.001 and stats["max"] == 0.004
    assert stats["p90"] == pytest.approx(0.0037) and stats["p99"] == pytest.approx(0.00397)
    assert stats["throughput"] == pytest.approx(400.0)


def test_timing_stats_of_zero_seconds_have_infinite_throughput() -> None:
    assert timing_stats([0.0, 0.0])["throughput"] == float("inf")


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, highlight=False, color_system=None), out


def test_outputs_table_shows_each_output_with_dashes_for_missing_values() -> None:
    console, out = _console()
    console.print(outputs_table([
        {"name": "digit", **summarize(np.array([3, 7], np.int64))},
        {"name": "empty", **summarize(np.zeros((0,), np.float32))}]))
    lines = out.getvalue().splitlines()
    digit = next(line for line in lines if "digit" in line)
    assert "(2,)" in digit and "int64" in digit and "3" in digit and "7" in digit
    empty = next(line for line in lines if "empty" in line)
    assert empty.count("-") >= 3


def test_steps_off_a_terminal_write_one_line_per_event() -> None:
    console, out = _console()
    steps = Steps(console, indent="  ")
    steps.queued("npu", "r-1", 2, devices=0)
    steps.position("npu", 0)
    steps.stop_waiting()
    assert out.getvalue().splitlines() == [
        "  No device of key 'npu' is online at the tracker; waiting for one to register"
        " (Ctrl-C to give up).",
        "  queued: request r-1 for 'npu', position 3 (2 ahead)",
        "  queue: position 1 (next in line)",
    ]
