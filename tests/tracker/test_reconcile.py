"""Reconciliation in the tracker's core: what a board reports it serves decides whether a
lease continues, is adopted, or is ended on the board, with time passed in.

The scenarios are the faults of issue 12: a board that stalls past the heartbeat timeout
and comes back (with its session, or without it, or after the deadline), a tracker that
restarts while a session runs, and a lease the tracker ends while the board is away.
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import given
from hypothesis import strategies as st

from compassd.tracker.reconcile import ADOPTED, SessionReport, Verdict, decide, lease_epoch
from compassd.tracker.records import (
    DeviceState,
    EndOnBoard,
    Granted,
    Lease,
    LeaseEnded,
    LeaseOutcome,
)
from compassd.tracker.scheduler import Scheduler

E = TypeVar("E")

OLD, NEW = "board-conn-1", "board-conn-2"
ALICE, BOB = "alice-conn", "bob-conn"


def of(effects: list[object], kind: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, kind)]


def reporting_board(s: Scheduler, owner: str = OLD, now: float = 0.0,
                    serving: SessionReport | None = None) -> list[object]:
    return list(s.register(now, owner, "npu-1", "npu", "h:1", reports=True,
                           serving=serving))


def held(s: Scheduler, now: float = 0.0, lease: float = 100.0) -> Lease:
    """Alice holds npu-1 and her client opened the session (the ticket was redeemed)."""
    _, effects = s.request(now, ALICE, "alice", "npu", lease=lease)
    (granted,) = of(list(effects), Granted)
    s.redeem(now, OLD, "npu-1", granted.lease.ticket)
    return granted.lease


def serving(lease: Lease, left: float) -> SessionReport:
    return SessionReport(lease.id, lease.user, left)


def test_ids_carry_the_epoch_and_differ_across_starts() -> None:
    first, second = Scheduler(), Scheduler()
    assert first.epoch != second.epoch
    reporting_board(first)
    reporting_board(second)
    a, b = held(first), held(second)
    assert a.id != b.id
    assert lease_epoch(a.id) == first.epoch and lease_epoch(b.id) == second.epoch
    assert a.request.id.startswith(f"req-{first.epoch}.")


def test_a_stalled_board_suspends_its_lease_and_the_lease_goes_on_when_it_is_back() -> None:
    s = Scheduler()
    reporting_board(s)
    lease = held(s)
    _, waiting = s.request(1.0, BOB, "bob", "npu")
    assert not of(list(waiting), Granted)
    effects = s.board_lost(5.0, OLD)
    assert not of(effects, LeaseEnded), "a stalled board's lease is suspended, not ended"
    assert s.devices["npu-1"].state is DeviceState.OFFLINE
    assert lease.suspended_since == 5.0
    assert s.leases[lease.id] is lease
    back = reporting_board(s, NEW, 20.0, serving(lease, 80.0))
    assert not of(back, Granted) and not of(back, LeaseEnded)
    assert s.devices["npu-1"].state is DeviceState.BUSY
    assert s.devices["npu-1"].lease is lease and lease.suspended_since is None
    # the holder releases; the board confirms; then bob gets it
    released = s.release(30.0, lease.id, "alice")
    (ended,) = of(released, LeaseEnded)
    assert ended.revoke and not of(released, Granted)
    assert s.devices["npu-1"].state is DeviceState.BUSY, "free only once the board confirms"
    confirmed = s.session_ended(31.0, NEW, "npu-1", lease.id)
    (granted,) = of(confirmed, Granted)
    assert granted.lease.user == "bob"


def test_a_board_back_without_the_session_ends_the_lease_with_a_reason() -> None:
    s = Scheduler()
    reporting_board(s)
    lease = held(s)
    s.board_lost(5.0, OLD)
    back = reporting_board(s, NEW, 20.0, None)
    (ended,) = of(back, LeaseEnded)
    assert ended.outcome is LeaseOutcome.DEVICE_LOST
    assert "came back without the session" in ended.message and lease.id in ended.message
    assert not ended.revoke
    assert s.devices["npu-1"].state is DeviceState.FREE


def test_a_suspended_lease_ends_at_its_deadline_and_the_late_board_ends_it_too() -> None:
    s = Scheduler()
    reporting_board(s)
    lease = held(s, lease=50.0)
    _, _ = s.request(1.0, BOB, "bob", "npu")
    s.board_lost(5.0, OLD)
    expired = s.advance(50.0)
    (ended,) = of(expired, LeaseEnded)
    assert ended.outcome is LeaseOutcome.DEVICE_LOST
    assert "stopped answering 45 s before" in ended.message
    # the board wakes up still serving it: the tracker has it end there first
    back = reporting_board(s, NEW, 60.0, serving(lease, 0.0))
    (end,) = of(back, EndOnBoard)
    assert end.lease == lease.id and lease.id in end.message
    assert not of(back, Granted), "never granted while the board still serves a session"
    assert s.devices["npu-1"].state is DeviceState.BUSY
    # a heartbeat that still shows it asks again; one without it confirms
    again = s.reconcile(61.0, NEW, "npu-1", serving(lease, 0.0))
    assert [e.lease for e in of(again, EndOnBoard)] == [lease.id]
    confirmed = s.reconcile(62.0, NEW, "npu-1", None)
    (granted,) = of(confirmed, Granted)
    assert granted.lease.user == "bob"


def test_a_restarted_tracker_adopts_the_running_session_and_never_shows_it_free() -> None:
    before = Scheduler()
    reporting_board(before)
    running = held(before)
    after = Scheduler()
    _, waiting = after.request(0.0, BOB, "bob", "npu")
    effects = reporting_board(after, NEW, 1.0, serving(running, 70.0))
    assert not of(effects, Granted)
    device = after.devices["npu-1"]
    assert device.state is DeviceState.BUSY
    adopted = device.lease
    assert adopted is not None and adopted.id == running.id and adopted.adopted
    assert adopted.user == "alice" and adopted.owner is ADOPTED
    assert adopted.deadline == 71.0
    # the board ends the session when alice closes it; then bob's request is granted
    (granted,) = of(after.session_ended(10.0, NEW, "npu-1", running.id), Granted)
    assert granted.lease.user == "bob" and granted.lease.id != running.id


def test_an_adopted_lease_expires_at_the_reported_deadline_and_is_ended_on_the_board() -> None:
    s = Scheduler()
    reporting_board(s, serving=SessionReport("lease-0ld0ld00.4", "alice", 30.0))
    (ended,) = of(s.advance(30.0), LeaseEnded)
    assert ended.outcome is LeaseOutcome.EXPIRED and ended.revoke
    assert s.devices["npu-1"].state is DeviceState.BUSY
    assert of(s.session_ended(31.0, OLD, "npu-1", "lease-0ld0ld00.4"), LeaseEnded) == []
    assert s.devices["npu-1"].state is DeviceState.FREE


def test_a_report_sent_before_the_revoke_arrived_never_adopts_the_ended_lease_again(
) -> None:
    s = Scheduler()
    reporting_board(s, serving=SessionReport("lease-0ld0ld00.4", "alice", 30.0))
    (ended,) = of(s.release(2.0, "lease-0ld0ld00.4", "alice"), LeaseEnded)
    assert ended.revoke
    # a heartbeat the board sent before the revoke reached it still lists the lease
    again = s.reconcile(2.5, OLD, "npu-1", SessionReport("lease-0ld0ld00.4", "alice", 27.5))
    assert [e.lease for e in of(again, EndOnBoard)] == ["lease-0ld0ld00.4"]
    assert s.devices["npu-1"].lease is None, "the ended lease was adopted again"
    assert s.devices["npu-1"].state is DeviceState.BUSY
    s.session_ended(3.0, OLD, "npu-1", "lease-0ld0ld00.4")
    assert s.devices["npu-1"].state is DeviceState.FREE


def test_a_holder_can_release_an_adopted_lease_from_a_new_connection() -> None:
    s = Scheduler()
    reporting_board(s, serving=SessionReport("lease-0ld0ld00.4", "alice", 30.0))
    (ended,) = of(s.release(2.0, "lease-0ld0ld00.4", "alice"), LeaseEnded)
    assert ended.outcome is LeaseOutcome.RELEASED and ended.revoke


def test_a_session_that_ended_on_the_board_unheard_ends_the_lease_on_the_next_report() -> None:
    s = Scheduler()
    reporting_board(s)
    lease = held(s)
    (ended,) = of(s.reconcile(3.0, OLD, "npu-1", None), LeaseEnded)
    assert ended.outcome is LeaseOutcome.SESSION_ENDED and lease.id in ended.message


def test_a_lease_whose_client_has_not_come_yet_is_left_alone() -> None:
    s = Scheduler()
    reporting_board(s)
    _, effects = s.request(0.0, ALICE, "alice", "npu")
    (granted,) = of(list(effects), Granted)
    assert s.reconcile(3.0, OLD, "npu-1", None) == []
    assert s.devices["npu-1"].lease is granted.lease


def test_a_board_that_does_not_report_keeps_the_old_behaviour() -> None:
    s = Scheduler()
    s.register(0.0, OLD, "npu-1", "npu", "h:1")
    lease = held(s)
    (ended,) = of(s.board_lost(5.0, OLD), LeaseEnded)
    assert ended.lease is lease and ended.outcome is LeaseOutcome.DEVICE_LOST
    s.register(6.0, NEW, "npu-1", "npu", "h:1")
    assert s.reconcile(6.0, NEW, "npu-1", None) == []


@given(
    has_lease=st.booleans(), redeemed=st.booleans(), ending=st.sampled_from([None, "E"]),
    reported=st.sampled_from([None, "current", "E", "ours-ended", "foreign"]),
)
def test_decide_never_continues_a_lease_the_board_does_not_serve(
    has_lease: bool, redeemed: bool, ending: str | None, reported: str | None
) -> None:
    s = Scheduler()
    reporting_board(s)
    device = s.devices["npu-1"]
    current = None
    if has_lease:
        _, effects = s.request(0.0, ALICE, "alice", "npu")
        current = of(list(effects), Granted)[0].lease
        current.redeemed = redeemed
    device.ending = f"lease-{s.epoch}.99" if ending else None
    ids = {"current": current.id if current else f"lease-{s.epoch}.98",
           "E": f"lease-{s.epoch}.99", "ours-ended": f"lease-{s.epoch}.97",
           "foreign": "lease-feedbeef.3"}
    report = None if reported is None else SessionReport(ids[reported], "x", 10.0)
    known = s.leases.get(report.lease) if report else None
    verdicts = decide(device, report, known, s.epoch)
    if Verdict.CONTINUE in verdicts:
        assert report is not None and current is not None and report.lease == current.id
    if Verdict.ADOPT in verdicts:
        assert report is not None and lease_epoch(report.lease) != s.epoch
    if current is not None and current.redeemed and (report is None
                                                      or report.lease != current.id):
        assert Verdict.GONE in verdicts
    if device.ending and (report is None or report.lease != device.ending):
        assert Verdict.CONFIRMED in verdicts
