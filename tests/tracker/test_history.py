"""compassd.tracker.history: leases and waits remembered from the scheduler's effects,
summed into utilisation, wait percentiles and board-hours."""

from __future__ import annotations

import pytest

from compassd.tracker.history import (
    LeaseSpan,
    MemoryHistory,
    WaitSample,
    percentile,
    summarise,
)
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(map(float, range(1, 101))), 95) == 95.0
    assert percentile([5.0], 99) == 5.0


def test_memory_history_follows_grants_and_ends() -> None:
    scheduler = Scheduler(policy=Policy(claim_timeout=None))
    history = MemoryHistory()
    board, alice = object(), object()
    history.observe(scheduler.register(0.0, board, "npu-1", "x2", "h:1"), 0.0)
    _, effects = scheduler.request(100.0, alice, "alice", "x2")
    history.observe(effects, 100.0)
    _, effects = scheduler.request(110.0, alice, "alice", "x2")  # waits for npu-1
    history.observe(effects, 110.0)
    lease = next(iter(scheduler.leases))
    history.observe(scheduler.release(400.0, lease, "alice"), 400.0)
    spans = sorted(history.leases(0.0, 1000.0), key=lambda s: s.start)
    first, second = (span.lease for span in spans)
    assert spans == [LeaseSpan("npu-1", "x2", "alice", 100.0, 400.0, first),
                     LeaseSpan("npu-1", "x2", "alice", 400.0, None, second)]
    assert history.waits(0.0, 1000.0) == [WaitSample("x2", 100.0, 0.0, first),
                                          WaitSample("x2", 400.0, 290.0, second)]
    assert history.waits(200.0, 1000.0) == [WaitSample("x2", 400.0, 290.0, second)]


def test_memory_history_forgets_what_is_older_than_it_keeps_and_past_its_limit() -> None:
    scheduler = Scheduler(policy=Policy(claim_timeout=None))
    history = MemoryHistory(keep=1000.0, limit=3)
    board, alice = object(), object()
    history.observe(scheduler.register(0.0, board, "npu-1", "x2", "h:1"), 0.0)
    for n in range(5):
        _, effects = scheduler.request(n * 10.0, alice, "alice", "x2")
        history.observe(effects, n * 10.0)
        history.observe(scheduler.release(n * 10.0 + 5, next(iter(scheduler.leases)),
                                          "alice"), n * 10.0 + 5)
    assert [s.start for s in history.leases(0.0, 100.0)] == [20.0, 30.0, 40.0]
    history.observe([], 5000.0)
    assert history.leases(0.0, 6000.0) == [] and history.waits(0.0, 6000.0) == []


def test_summary_splits_leases_into_slices_per_device_key_and_user() -> None:
    history = MemoryHistory()
    history._ended.extend([
        LeaseSpan("npu-1", "x2", "alice", 0.0, 150.0),     # slice 0 full, slice 1 half
        LeaseSpan("npu-2", "x2", "bob", 350.0, 500.0),     # slice 3 half, past the end
    ])
    history._open["lease-9"] = LeaseSpan("cpu-1", "cpu", "bob", 300.0, None)
    history._waits.extend([WaitSample("x2", 10.0, 1.0), WaitSample("x2", 20.0, 3.0),
                           WaitSample("cpu", 300.0, 0.5)])
    summary = summarise(history, 0.0, 400.0, 4, {"npu-1": "x2", "npu-2": "x2",
                                                  "idle-1": "x2"})
    assert summary.by_device["npu-1"] == [1.0, 0.5, 0.0, 0.0]
    assert summary.by_device["npu-2"] == [0.0, 0.0, 0.0, 0.5]
    assert summary.by_device["idle-1"] == [0.0] * 4
    assert summary.by_device["cpu-1"] == [0.0, 0.0, 0.0, 1.0]  # left since, still held
    assert summary.by_key["x2"] == pytest.approx([1 / 3, 0.5 / 3, 0.0, 0.5 / 3])
    assert summary.by_key["cpu"] == [0.0, 0.0, 0.0, 1.0]
    assert summary.hours_by_user == pytest.approx({"alice": 150 / 3600, "bob": 150 / 3600})
    assert summary.waits["x2"] == {"count": 2.0, "p50": 1.0, "p95": 3.0, "max": 3.0}
