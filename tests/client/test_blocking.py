"""The blocking client against a real ``twistd compass-tracker`` on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from compassd.client import (
    LeaseLost,
    Tracker,
    TrackerUnreachable,
    WaitTimeout,
    _reactor,
    connect_tracker,
)
from tests.helpers import free_port, registered_board

KEY = "npu-x2"
WAIT = 10.0
"""Every request here that should be granted at once gets this long before it fails."""


@pytest.fixture
def tracker_args() -> tuple[str, ...]:
    """The boards here send no heartbeats: let them stay silent for the whole test."""
    return ("--heartbeat-timeout", "600")


def board(address: tuple[str, int]) -> Any:
    return registered_board(address, key=KEY)


@contextmanager
def client(address: tuple[str, int], user: str) -> Iterator[Tracker]:
    with connect_tracker(*address, user=user, timeout=5) as t:
        yield t


def device_rows(t: Tracker) -> dict[str, tuple[str, str | None]]:
    return {d["name"]: (d["state"], d["holder"]) for d in t.summary()["devices"]}


def test_request_as_a_context_manager_holds_the_device_and_releases_it_on_exit(
    tracker: tuple[str, int],
) -> None:
    with board(tracker), client(tracker, "alice") as alice:
        assert alice.user == "alice"
        with alice.request(KEY, lease=60, wait=WAIT) as lease:
            assert (lease.device, lease.address, lease.key) == ("npu-1", "10.0.0.5:9091", KEY)
            assert lease.info == {"target": "X2_1204"}
            assert 50 < lease.remaining <= 60
            assert lease.active
            assert device_rows(alice) == {"npu-1": ("busy", "alice")}
            assert "npu-1" in repr(lease)
        assert not lease.active
        assert lease.end_reason is None
        assert device_rows(alice) == {"npu-1": ("free", None)}


def test_lease_is_released_when_the_with_block_raises(tracker: tuple[str, int]) -> None:
    with board(tracker), client(tracker, "alice") as alice:
        with pytest.raises(RuntimeError, match="model failed"):
            with alice.request(KEY, wait=WAIT) as lease:
                assert device_rows(alice) == {"npu-1": ("busy", "alice")}
                raise RuntimeError("model failed")
        assert not lease.active
        assert device_rows(alice) == {"npu-1": ("free", None)}


def test_leaving_the_block_of_a_kicked_lease_does_not_raise_and_says_why(
    tracker: tuple[str, int],
) -> None:
    with board(tracker), client(tracker, "alice") as alice, client(tracker, "root") as root:
        with alice.request(KEY, wait=WAIT) as lease:
            root.kick(lease.id, "maintenance")
            reason = _reactor.call(lambda: lease._lease.ended, timeout=WAIT)
            assert not lease.active
        assert isinstance(reason, LeaseLost)
        assert reason.reason == "kicked"
        assert lease.end_reason is reason
        assert device_rows(alice) == {"npu-1": ("free", None)}


def test_summary_lists_devices_and_queues_with_who_waits(tracker: tuple[str, int]) -> None:
    with board(tracker), client(tracker, "alice") as alice:
        with alice.request(KEY, wait=WAIT) as lease:
            summary = alice.summary()
            assert set(summary) == {"devices", "queues"}
            [device] = summary["devices"]
            assert device["name"] == "npu-1"
            assert device["key"] == KEY
            assert device["address"] == "10.0.0.5:9091"
            assert device["state"] == "busy"
            assert device["holder"] == "alice"
            assert device["lease"] == lease.id
            [queue] = summary["queues"]
            assert (queue["key"], queue["free"], queue["total"]) == (KEY, 0, 1)
            assert queue["count"] == 0 and queue["waiting"] == []


def test_waiting_request_shows_in_the_summary_at_its_position(
    tracker: tuple[str, int],
) -> None:
    with board(tracker), client(tracker, "alice") as alice, client(tracker, "bob") as bob:
        with alice.request(KEY, wait=WAIT):
            def request() -> Any:
                answered: Deferred[str] = Deferred()
                d = bob._tracker.request(KEY, priority=3,
                                         on_queued=lambda r, p, n: answered.callback(r))
                d.addErrback(lambda _: None)  # withdrawn when bob's connection closes
                return answered  # the answer (once a store has it), not the grant

            queued = [_reactor.call(request)]
            summary = bob.summary()
            [queue] = summary["queues"]
            assert queue["count"] == 1
            [row] = queue["waiting"]
            assert (row["user"], row["priority"], row["position"]) == ("bob", 3, 0)
            assert row["request"] == queued[0]


def test_wait_timeout_raises_wait_timeout_saying_how_long_and_where(
    tracker: tuple[str, int],
) -> None:
    with board(tracker), client(tracker, "alice") as alice, client(tracker, "bob") as bob:
        with alice.request(KEY, wait=WAIT):
            with pytest.raises(WaitTimeout) as caught:
                bob.request(KEY, wait=1)
        error = caught.value
        assert error.key == KEY
        assert error.position == 0
        assert error.waited is not None and error.waited >= 1
        assert "Waited 1 s" in str(error)
        assert "position 1 in the queue, counting from 1" in str(error)
        assert "compass status" in str(error)
        # the timed-out request is gone from the queue
        assert all(q["count"] == 0 for q in bob.summary()["queues"])


def test_connect_tracker_to_a_closed_port_raises_tracker_unreachable() -> None:
    port = free_port()
    with pytest.raises(TrackerUnreachable, match=f"127.0.0.1:{port}"):
        connect_tracker("127.0.0.1", port, timeout=5)


def test_closing_the_tracker_ends_its_leases_and_later_calls_say_unreachable(
    tracker: tuple[str, int],
) -> None:
    with board(tracker), client(tracker, "bob") as bob:
        alice = connect_tracker(*tracker, user="alice", timeout=5)
        lease = alice.request(KEY, wait=WAIT)
        alice.close()
        assert not lease.active
        with pytest.raises(TrackerUnreachable, match="closed"):
            alice.summary()
        lease.release()  # harmless after the end
        # the tracker ended the lease when the connection went: bob can have the device
        with bob.request(KEY, wait=WAIT) as again:
            assert again.device == "npu-1"


def test_a_connection_the_tracker_closed_as_idle_is_made_again_on_next_use() -> None:
    import time

    from tests.helpers import daemon_log, start_twistd, stop

    proc, port = start_twistd("compass-tracker", "--idle-timeout", "0.3")
    try:
        t = connect_tracker("127.0.0.1", port, user="sleepy")
        first = t._connection
        deadline = time.monotonic() + 20
        while first.connected and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the tracker's idle timeout, bounded
        assert not first.connected, daemon_log(proc)
        assert t.summary()["devices"] == []  # a new connection, said hello again
        assert t._connection is not first and t._connection.connected
        t.close()
        assert not t._connection.connected
    finally:
        stop(proc)
