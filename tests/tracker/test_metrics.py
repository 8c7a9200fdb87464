"""compassd.tracker.metrics: the tracker's state read at scrape time, its events counted
from the scheduler's effects."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from compassd.tracker.metrics import NO_KEY, TrackerMetrics, connection_counts
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler


def values(metrics: TrackerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_devices_waiting_grants_waits_and_lease_ends_are_counted() -> None:
    scheduler = Scheduler(policy=Policy(claim_timeout=None))
    metrics = TrackerMetrics(lambda: scheduler)
    board, alice, bob = object(), object(), object()
    metrics.observe(scheduler.register(0.0, board, "npu-1", "x2", "h:1"), 0.0)
    metrics.observe(scheduler.register(0.0, board, "npu-2", "x2", "h:2"), 0.0)
    v = values(metrics)
    assert v[("compassd_tracker_devices", (("key", "x2"), ("state", "free")))] == 2
    assert v[("compassd_tracker_grants_total", (("key", "x2"),))] == 0

    _, effects = scheduler.request(1.0, alice, "alice", "x2")
    metrics.observe(effects, 1.0)
    _, effects = scheduler.request(2.0, alice, "alice", "x2")
    metrics.observe(effects, 2.0)
    waiting, effects = scheduler.request(3.0, bob, "bob", "x2")
    metrics.observe(effects, 3.0)
    v = values(metrics)
    assert v[("compassd_tracker_devices", (("key", "x2"), ("state", "busy")))] == 2
    assert v[("compassd_tracker_waiting_requests", (("key", "x2"),))] == 1
    assert v[("compassd_tracker_active_leases", (("key", "x2"),))] == 2
    assert v[("compassd_tracker_device_state",
              (("device", "npu-1"), ("key", "x2"), ("state", "busy")))] == 1
    assert v[("compassd_tracker_device_state",
              (("device", "npu-1"), ("key", "x2"), ("state", "free")))] == 0

    lease = next(iter(scheduler.leases))
    effects = scheduler.release(10.0, lease, "alice")  # bob's request gets the device
    metrics.observe(effects, 10.0)
    v = values(metrics)
    assert v[("compassd_tracker_grants_total", (("key", "x2"),))] == 3
    assert v[("compassd_tracker_requests_total", (("key", "x2"), ("outcome", "granted")))] == 3
    assert v[("compassd_tracker_lease_ends_total",
              (("key", "x2"), ("reason", "released")))] == 1
    assert v[("compassd_tracker_wait_seconds_count", (("key", "x2"),))] == 3
    assert v[("compassd_tracker_wait_seconds_sum", (("key", "x2"),))] == 7.0  # bob: 3 to 10
    assert v[("compassd_tracker_wait_seconds_bucket", (("key", "x2"), ("le", "5.0")))] == 2
    assert v[("compassd_tracker_hold_seconds_sum", (("key", "x2"),))] == 9.0
    assert waiting.id not in scheduler.requests


def test_requests_for_keys_no_board_serves_share_one_label() -> None:
    scheduler = Scheduler()
    metrics = TrackerMetrics(lambda: scheduler)
    client = object()
    for n in range(20):
        request, effects = scheduler.request(0.0, client, "mallory", f"made-up-{n}")
        metrics.observe(effects, 0.0)
        metrics.observe(scheduler.cancel(1.0, request.id, "mallory"), 1.0)
    v = values(metrics)
    counted = {labels for name, labels in v if name == "compassd_tracker_requests_total"}
    assert counted == {(("key", NO_KEY), ("outcome", "cancelled"))}
    assert v[("compassd_tracker_requests_total",
              (("key", NO_KEY), ("outcome", "cancelled")))] == 20


def test_connections_by_role_refusals_and_the_store() -> None:
    class Conn:
        def __init__(self, role: str, greeted: bool = True) -> None:
            self.role, self.identity = role, (object() if greeted else None)

    connections = [Conn("client"), Conn("client"), Conn("board"), Conn("peer", False)]
    backlog = [None]
    scheduler = Scheduler()
    metrics = TrackerMetrics(lambda: scheduler, lambda: connection_counts(connections),
                             lambda: backlog[0])
    metrics.refused_hello("admin")
    metrics.refused_hello("nonsense")
    v = values(metrics)
    assert v[("compassd_tracker_connections", (("role", "client"),))] == 2
    assert v[("compassd_tracker_connections", (("role", "board"),))] == 1
    assert v[("compassd_tracker_refused_authentications_total", (("role", "admin"),))] == 1
    assert v[("compassd_tracker_refused_authentications_total", (("role", "other"),))] == 1
    assert ("compassd_tracker_store_backlog", ()) not in v  # no store: no such series
    backlog[0] = 7
    metrics.store_wrote(0.002)
    v = values(metrics)
    assert v[("compassd_tracker_store_backlog", ())] == 7
    assert v[("compassd_tracker_store_write_seconds_count", ())] == 1
