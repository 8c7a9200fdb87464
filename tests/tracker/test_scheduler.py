"""The tracker's functional core, one behaviour at a time, with time passed in."""

from __future__ import annotations

from typing import TypeVar

import pytest

from compassd.protocol.errors import (
    BadRequest,
    DeviceConflict,
    LimitExceeded,
    NoSuchDevice,
    NoSuchKey,
    NoSuchLease,
    NoSuchRequest,
    NotYourLease,
    TicketRejected,
)
from compassd.tracker.records import (
    DeviceChanged,
    DeviceState,
    Effect,
    Granted,
    Lease,
    LeaseEnded,
    LeaseOutcome,
    Policy,
    QueueChanged,
    RequestEnded,
    RequestOutcome,
)
from compassd.tracker.scheduler import Scheduler

E = TypeVar("E")

BOARD = "board-conn"
ALICE = "alice-conn"
BOB = "bob-conn"


def of(effects: list[Effect], kind: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, kind)]


def only(effects: list[Effect], kind: type[E]) -> E:
    found = of(effects, kind)
    assert len(found) == 1, effects
    return found[0]


def board(
    scheduler: Scheduler, *names: str, key: str = "npu", now: float = 0.0, **kw: object
) -> None:
    for name in names:
        scheduler.register(now, BOARD, name, key, f"{name}:9000", **kw)  # type: ignore[arg-type]


def grant(
    scheduler: Scheduler, now: float = 0.0, owner: str = ALICE, user: str = "alice", **kw: object
) -> Lease:
    """Request a device that is free: the request must be granted at once."""
    _, effects = scheduler.request(now, owner, user, "npu", **kw)  # type: ignore[arg-type]
    return only(effects, Granted).lease


# --- devices ----------------------------------------------------------------------------


def test_registered_device_is_free_and_announced() -> None:
    s = Scheduler()
    effects = s.register(0.0, BOARD, "npu-1", "npu", "h:1", tags=["big"])
    change = only(effects, DeviceChanged)
    assert change.device.name == "npu-1"
    assert change.state is DeviceState.FREE
    assert s.devices["npu-1"].state is DeviceState.FREE
    assert s.devices["npu-1"].tags == frozenset({"big"})
    assert s.free_count("npu") == 1
    assert s.keys() == ["npu"]


def test_device_registered_unhealthy_is_quarantined() -> None:
    s = Scheduler()
    s.register(0.0, BOARD, "npu-1", "npu", "h:1", healthy=False)
    assert s.devices["npu-1"].state is DeviceState.QUARANTINED
    assert s.free_count("npu") == 0


def test_leased_device_is_busy_and_returns_to_free_when_released() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    assert s.devices["npu-1"].state is DeviceState.BUSY
    assert s.free_count("npu") == 0
    effects = s.release(1.0, lease.id, "alice")
    assert only(effects, DeviceChanged).state is DeviceState.FREE
    assert s.devices["npu-1"].state is DeviceState.FREE
    assert s.free_count("npu") == 1


def test_device_of_lost_board_is_offline() -> None:
    s = Scheduler()
    board(s, "npu-1", "npu-2")
    effects = s.board_lost(5.0, BOARD)
    assert [c.state for c in of(effects, DeviceChanged)] == [DeviceState.OFFLINE] * 2
    assert s.devices["npu-1"].state is DeviceState.OFFLINE
    assert s.devices["npu-1"].offline_since == 5.0
    assert s.online_count("npu") == 0
    assert s.free_count("npu") == 0


def test_name_held_by_another_live_board_is_refused() -> None:
    s = Scheduler()
    board(s, "npu-1")
    with pytest.raises(DeviceConflict):
        s.register(0.0, "other-board", "npu-1", "npu", "h:2")
    assert s.devices["npu-1"].owner == BOARD


def test_takeover_replaces_the_device_and_ends_its_lease_device_lost() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    effects = s.register(1.0, "new-board", "npu-1", "npu", "h:2", takeover=True)
    ended = only(effects, LeaseEnded)
    assert (ended.lease, ended.outcome, ended.revoke) == (lease, LeaseOutcome.DEVICE_LOST, False)
    assert s.devices["npu-1"].owner == "new-board"
    assert s.devices["npu-1"].state is DeviceState.FREE
    assert s.leases == {}


def test_registering_again_updates_tags_and_serves_requests_now_eligible() -> None:
    s = Scheduler()
    board(s, "npu-1")
    request, effects = s.request(0.0, ALICE, "alice", "npu", tags=["big"])
    assert of(effects, Granted) == []
    effects = s.register(1.0, BOARD, "npu-1", "npu", "h:1", tags=["big"])
    assert only(effects, Granted).lease.request is request


def test_unregistered_device_is_gone() -> None:
    s = Scheduler()
    board(s, "npu-1")
    effects = s.unregister(1.0, BOARD, "npu-1")
    assert only(effects, DeviceChanged).state is DeviceState.OFFLINE
    assert "npu-1" not in s.devices
    assert s.keys() == []


def test_unregister_of_another_boards_device_is_refused() -> None:
    s = Scheduler()
    board(s, "npu-1")
    with pytest.raises(NoSuchDevice):
        s.unregister(1.0, "other-board", "npu-1")


def test_unregistering_a_leased_device_ends_the_lease_and_grants_nothing_on_it() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    waiting, _ = s.request(1.0, BOB, "bob", "npu")
    effects = s.unregister(2.0, BOARD, "npu-1")
    assert only(effects, LeaseEnded).outcome is LeaseOutcome.DEVICE_LOST
    assert only(effects, LeaseEnded).lease is lease
    assert of(effects, Granted) == []
    assert s.leases == {}
    assert waiting.id in s.requests


# --- requests and leases ----------------------------------------------------------------


def test_request_with_a_free_device_is_granted_at_once() -> None:
    s = Scheduler()
    board(s, "npu-1")
    request, effects = s.request(3.0, ALICE, "alice", "npu")
    lease = only(effects, Granted).lease
    assert lease.request is request
    assert lease.device is s.devices["npu-1"]
    assert lease.owner == ALICE
    assert lease.user == "alice"
    assert lease.granted_at == 3.0
    assert s.leases == {lease.id: lease}
    assert s.requests == {}
    assert of(effects, QueueChanged) == [QueueChanged("npu")]
    assert only(effects, DeviceChanged).state is DeviceState.BUSY
    assert lease.id in s.owned_by(ALICE)


def test_request_without_a_free_device_waits_and_announces_the_queue() -> None:
    s = Scheduler()
    request, effects = s.request(0.0, ALICE, "alice", "npu")
    assert effects == [QueueChanged("npu")]
    assert s.requests == {request.id: request}
    assert s.position(request.id) == 0


def test_lease_gets_what_was_asked_when_under_the_caps() -> None:
    s = Scheduler(policy=Policy(max_lease=100.0))
    board(s, "npu-1")
    assert grant(s, now=10.0, lease=30.0).deadline == 40.0


def test_lease_defaults_to_the_policys_default_lease() -> None:
    s = Scheduler(policy=Policy(default_lease=50.0))
    board(s, "npu-1")
    assert grant(s).seconds == 50.0


def test_lease_is_capped_by_the_policys_max_lease() -> None:
    s = Scheduler(policy=Policy(max_lease=100.0))
    board(s, "npu-1")
    assert grant(s, lease=1000.0).seconds == 100.0


def test_lease_is_capped_by_the_keys_max_lease() -> None:
    s = Scheduler(policy=Policy(max_lease=100.0, key_max_lease={"npu": 20.0}))
    board(s, "npu-1")
    assert grant(s, lease=50.0).seconds == 20.0


def test_key_max_lease_may_be_longer_than_the_global_max() -> None:
    s = Scheduler(policy=Policy(max_lease=100.0, key_max_lease={"npu": 500.0}))
    board(s, "npu-1")
    assert grant(s, lease=400.0).seconds == 400.0


def test_lease_is_capped_by_the_devices_own_max_lease() -> None:
    s = Scheduler(policy=Policy(max_lease=100.0))
    board(s, "npu-1", max_lease=10.0)
    assert grant(s, lease=50.0).seconds == 10.0


def test_non_positive_lease_is_refused() -> None:
    s = Scheduler()
    with pytest.raises(BadRequest):
        s.request(0.0, ALICE, "alice", "npu", lease=0)
    assert s.requests == {}


def test_queued_requests_per_user_are_limited() -> None:
    s = Scheduler(policy=Policy(max_queued_per_user=2))
    s.request(0.0, ALICE, "alice", "npu")
    s.request(0.0, ALICE, "alice", "other")
    with pytest.raises(LimitExceeded):
        s.request(0.0, ALICE, "alice", "npu")
    s.request(0.0, BOB, "bob", "npu")
    assert len(s.requests) == 3


def test_a_key_no_device_serves_is_refused_naming_the_keys_with_devices() -> None:
    s = Scheduler()
    with pytest.raises(NoSuchKey, match="No device is registered at this tracker yet"):
        s.request(0.0, ALICE, "alice", "npu", wait_for_board=False)
    board(s, "npu-1")
    board(s, "cpu-1", key="cpu")
    with pytest.raises(NoSuchKey) as refused:
        s.request(0.0, ALICE, "alice", "nppu", wait_for_board=False)
    assert "No device serves key 'nppu'" in str(refused.value)
    assert "The keys with devices are: cpu, npu." in str(refused.value)
    assert "--wait-for-board" in str(refused.value)
    assert s.keys() == ["cpu", "npu"] and s.requests == {}
    # Asked to wait for a board, it queues; and a board that registers later serves it.
    waiting, effects = s.request(1.0, ALICE, "alice", "nppu", wait_for_board=True)
    assert of(effects, Granted) == [] and s.keys() == ["cpu", "nppu", "npu"]
    effects = s.register(2.0, BOARD, "nppu-1", "nppu", "h:3")
    assert only(effects, Granted).lease.request is waiting


def test_a_key_whose_devices_went_offline_lately_still_queues() -> None:
    s = Scheduler(Policy(forget_offline=60.0))
    board(s, "npu-1")
    s.board_lost(1.0, BOARD)
    request, _ = s.request(2.0, ALICE, "alice", "npu", wait_for_board=False)
    assert request.id in s.requests
    s.cancel(3.0, request.id, "alice")
    s.advance(61.0)  # forgotten now: the key is unknown again
    assert s.keys() == []
    with pytest.raises(NoSuchKey):
        s.request(62.0, ALICE, "alice", "npu", wait_for_board=False)


def test_many_keys_are_named_up_to_a_limit() -> None:
    s = Scheduler()
    for n in range(25):
        board(s, f"d-{n:02}", key=f"k-{n:02}")
    with pytest.raises(NoSuchKey, match=r"k-00, k-01, .*k-19 and 5 more\."):
        s.request(0.0, ALICE, "alice", "x", wait_for_board=False)


@pytest.mark.parametrize("end", ["cancel", "timeout", "client lost"])
def test_a_pool_left_with_no_device_and_no_request_is_forgotten(end: str) -> None:
    s = Scheduler(Policy(fair_share_half_life=3600.0))
    board(s, "npu-1")
    request, _ = s.request(0.0, ALICE, "alice", "made-up", wait=5.0)
    assert s.keys() == ["made-up", "npu"]
    if end == "cancel":
        s.cancel(1.0, request.id, "alice")
    elif end == "timeout":
        s.advance(5.0)
    else:
        s.client_lost(1.0, ALICE)
    assert s.keys() == ["npu"] and s.served_keys() == ["npu"]
    assert "made-up" not in s.usage_keys()  # nobody used it: no ledger either


def test_a_forgotten_pool_keeps_its_usage_for_when_a_device_returns() -> None:
    s = Scheduler(Policy(fair_share_half_life=3600.0, claim_timeout=None))
    board(s, "npu-1")
    lease = grant(s)
    s.release(100.0, lease.id, "alice")
    s.unregister(101.0, BOARD, "npu-1")
    assert s.keys() == [] and s.usage_keys() == ["npu"]
    assert s.usage("npu", "alice", 101.0) > 0


def test_tickets_are_long_random_and_distinct() -> None:
    s = Scheduler()
    board(s, "npu-1", "npu-2", "npu-3")
    tickets = {grant(s).ticket for _ in range(3)}
    assert len(tickets) == 3
    # 256 bits, URL-safe base64: 43 characters.
    assert all(len(t) >= 43 for t in tickets)


def test_ticket_is_redeemed_once_at_its_board() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    assert s.redeem(1.0, BOARD, "npu-1", lease.ticket) is lease
    assert lease.redeemed
    with pytest.raises(TicketRejected):
        s.redeem(2.0, BOARD, "npu-1", lease.ticket)


def test_ticket_is_bound_to_its_device() -> None:
    s = Scheduler()
    board(s, "npu-1", "npu-2")
    lease = grant(s)
    other = "npu-2" if lease.device.name == "npu-1" else "npu-1"
    with pytest.raises(NoSuchDevice, match=f"not granted for device {other}"):
        s.redeem(1.0, BOARD, other, lease.ticket)
    # The wrong device did not use the ticket up.
    assert s.redeem(1.0, BOARD, lease.device.name, lease.ticket) is lease


def test_ticket_must_be_presented_by_the_devices_own_board() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    with pytest.raises(NoSuchDevice):
        s.redeem(1.0, "impostor", "npu-1", lease.ticket)


def test_unknown_ticket_is_rejected() -> None:
    s = Scheduler()
    board(s, "npu-1")
    grant(s)
    with pytest.raises(TicketRejected):
        s.redeem(1.0, BOARD, "npu-1", "guess")


def test_ticket_of_an_ended_lease_is_rejected() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    s.release(1.0, lease.id, "alice")
    with pytest.raises(TicketRejected):
        s.redeem(2.0, BOARD, "npu-1", lease.ticket)


def test_release_ends_the_lease_and_tells_the_board() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    s.redeem(0.5, BOARD, "npu-1", lease.ticket)  # the client opened its session
    effects = s.release(1.0, lease.id, "alice")
    ended = only(effects, LeaseEnded)
    assert (ended.lease, ended.outcome, ended.revoke) == (lease, LeaseOutcome.RELEASED, True)
    assert s.leases == {}
    assert lease.id not in s.owned_by(ALICE)


def test_a_lease_whose_ticket_was_never_presented_ends_without_bothering_the_board() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    ended = only(s.release(1.0, lease.id, "alice"), LeaseEnded)
    assert ended.outcome is LeaseOutcome.RELEASED and not ended.revoke


def test_release_of_someone_elses_lease_is_refused() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    with pytest.raises(NotYourLease):
        s.release(1.0, lease.id, "bob")
    assert lease.id in s.leases


def test_release_of_an_ended_lease_is_refused() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    s.release(1.0, lease.id, "alice")
    with pytest.raises(NoSuchLease):
        s.release(2.0, lease.id, "alice")


def test_released_device_goes_to_the_next_waiting_request() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    waiting, _ = s.request(1.0, BOB, "bob", "npu")
    effects = s.release(2.0, lease.id, "alice")
    assert only(effects, Granted).lease.request is waiting
    assert s.requests == {}


def test_kick_ends_the_lease_as_kicked() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    s.redeem(0.5, BOARD, "npu-1", lease.ticket)
    effects = s.kick(1.0, lease.id, "root", "maintenance")
    ended = only(effects, LeaseEnded)
    assert ended.outcome is LeaseOutcome.KICKED
    assert ended.revoke
    assert "maintenance" in ended.message


def test_lease_expires_at_its_deadline_not_before() -> None:
    s = Scheduler(policy=Policy(claim_timeout=None))
    board(s, "npu-1")
    lease = grant(s, now=0.0, lease=10.0)
    s.redeem(0.5, BOARD, "npu-1", lease.ticket)
    assert s.next_deadline() == 10.0
    assert s.advance(9.999) == []
    effects = s.advance(10.0)
    ended = only(effects, LeaseEnded)
    assert (ended.lease, ended.outcome, ended.revoke) == (lease, LeaseOutcome.EXPIRED, True)
    assert s.devices["npu-1"].state is DeviceState.FREE
    assert s.next_deadline() is None


def test_expired_lease_hands_the_device_to_the_next_request() -> None:
    s = Scheduler(policy=Policy(claim_timeout=None))
    board(s, "npu-1")
    grant(s, lease=10.0)
    waiting, _ = s.request(1.0, BOB, "bob", "npu")
    effects = s.advance(10.0)
    assert only(effects, Granted).lease.request is waiting


def test_session_ended_by_the_board_ends_the_lease_without_revoke() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    effects = s.session_ended(1.0, BOARD, "npu-1", lease.id, "closed")
    ended = only(effects, LeaseEnded)
    assert (ended.outcome, ended.revoke) == (LeaseOutcome.SESSION_ENDED, False)
    assert s.session_ended(2.0, BOARD, "npu-1", lease.id) == []


def test_unredeemed_ticket_ends_the_lease_as_unclaimed_after_the_claim_timeout() -> None:
    s = Scheduler(policy=Policy(claim_timeout=5.0))
    board(s, "npu-1")
    lease = grant(s, lease=100.0)
    assert s.next_deadline() == 5.0
    effects = s.advance(5.0)
    ended = only(effects, LeaseEnded)
    # nobody presented the ticket, so the board has no session to end
    assert (ended.lease, ended.outcome, ended.revoke) == (lease, LeaseOutcome.UNCLAIMED, False)


def test_redeemed_ticket_is_not_unclaimed() -> None:
    s = Scheduler(policy=Policy(claim_timeout=5.0))
    board(s, "npu-1")
    lease = grant(s, lease=100.0)
    s.redeem(1.0, BOARD, "npu-1", lease.ticket)
    assert s.advance(50.0) == []
    assert s.next_deadline() == 100.0
    assert only(s.advance(100.0), LeaseEnded).outcome is LeaseOutcome.EXPIRED


def test_lease_shorter_than_the_claim_timeout_simply_expires() -> None:
    s = Scheduler(policy=Policy(claim_timeout=60.0))
    board(s, "npu-1")
    grant(s, lease=10.0)
    assert only(s.advance(10.0), LeaseEnded).outcome is LeaseOutcome.EXPIRED


# --- cancel, wait timeout ------------------------------------------------------------


def test_cancel_ends_the_request_and_tells_its_owner() -> None:
    s = Scheduler()
    request, _ = s.request(2.0, ALICE, "alice", "npu")
    effects = s.cancel(5.0, request.id, "alice")
    ended = only(effects, RequestEnded)
    assert (ended.request, ended.outcome) == (request, RequestOutcome.CANCELLED)
    assert ended.request.owner == ALICE
    assert ended.waited == 3.0
    assert ended.position == 0
    assert QueueChanged("npu") in effects
    assert s.requests == {}
    assert s.owned_by(ALICE) == set()


def test_cancel_of_someone_elses_request_is_refused_unless_admin() -> None:
    s = Scheduler()
    request, _ = s.request(0.0, ALICE, "alice", "npu")
    with pytest.raises(NotYourLease):
        s.cancel(1.0, request.id, "bob")
    effects = s.cancel(1.0, request.id, "root", admin=True)
    assert "admin root" in only(effects, RequestEnded).message


def test_cancel_of_a_granted_request_is_refused() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    with pytest.raises(NoSuchRequest):
        s.cancel(1.0, lease.request.id, "alice")


def test_request_times_out_after_its_wait() -> None:
    s = Scheduler()
    request, _ = s.request(1.0, ALICE, "alice", "npu", wait=4.0)
    assert s.next_deadline() == 5.0
    assert s.advance(4.9) == []
    effects = s.advance(5.0)
    ended = only(effects, RequestEnded)
    assert (ended.request, ended.outcome, ended.waited) == (
        request,
        RequestOutcome.TIMED_OUT,
        4.0,
    )
    assert s.requests == {}


def test_granted_request_does_not_time_out_later() -> None:
    s = Scheduler(policy=Policy(claim_timeout=None))
    board(s, "npu-1")
    first = grant(s, lease=100.0)
    s.request(1.0, BOB, "bob", "npu", wait=10.0)
    s.release(2.0, first.id, "alice")
    assert of(s.advance(11.0), RequestEnded) == []


def test_cancelled_request_does_not_time_out_later() -> None:
    s = Scheduler()
    request, _ = s.request(0.0, ALICE, "alice", "npu", wait=10.0)
    s.cancel(1.0, request.id, "alice")
    assert s.next_deadline() is None
    assert s.advance(20.0) == []


# --- lost devices and clients -------------------------------------------------------


def test_board_lost_ends_its_lease_device_lost_without_revoke() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    effects = s.board_lost(1.0, BOARD)
    ended = only(effects, LeaseEnded)
    assert (ended.lease, ended.outcome, ended.revoke) == (lease, LeaseOutcome.DEVICE_LOST, False)
    assert ended.lease.owner == ALICE
    assert s.leases == {}
    assert s.devices["npu-1"].state is DeviceState.OFFLINE


def test_board_lost_does_not_grant_the_offline_device_to_a_waiting_request() -> None:
    s = Scheduler()
    board(s, "npu-1")
    grant(s)
    waiting, _ = s.request(1.0, BOB, "bob", "npu")
    effects = s.board_lost(2.0, BOARD)
    assert of(effects, Granted) == []
    assert waiting.id in s.requests


def test_offline_device_is_forgotten_after_forget_offline() -> None:
    s = Scheduler(policy=Policy(forget_offline=100.0))
    board(s, "npu-1")
    s.board_lost(10.0, BOARD)
    assert s.next_deadline() == 110.0
    assert s.advance(109.0) == []
    effects = s.advance(110.0)
    assert "removed" in only(effects, DeviceChanged).why
    assert s.devices == {}


def test_offline_device_is_kept_when_forget_offline_is_off() -> None:
    s = Scheduler(policy=Policy(forget_offline=None))
    board(s, "npu-1")
    s.board_lost(10.0, BOARD)
    assert s.next_deadline() is None
    assert s.devices["npu-1"].state is DeviceState.OFFLINE


def test_device_registered_again_after_going_offline_is_not_forgotten() -> None:
    s = Scheduler(policy=Policy(forget_offline=100.0))
    board(s, "npu-1")
    s.board_lost(10.0, BOARD)
    s.register(20.0, "board-again", "npu-1", "npu", "h:1")
    assert s.devices["npu-1"].state is DeviceState.FREE
    assert s.advance(200.0) == []
    assert "npu-1" in s.devices


def test_device_comes_back_online_when_its_board_registers_it_again() -> None:
    s = Scheduler()
    board(s, "npu-1")
    s.board_lost(10.0, BOARD)
    waiting, _ = s.request(11.0, ALICE, "alice", "npu")
    effects = s.register(20.0, BOARD, "npu-1", "npu", "h:1")
    assert s.devices["npu-1"].state is DeviceState.BUSY
    assert only(effects, Granted).lease.request is waiting


def test_client_lost_withdraws_its_requests() -> None:
    s = Scheduler()
    request, _ = s.request(0.0, ALICE, "alice", "npu")
    others, _ = s.request(0.0, BOB, "bob", "npu")
    effects = s.client_lost(1.0, ALICE)
    ended = only(effects, RequestEnded)
    assert (ended.request, ended.outcome) == (request, RequestOutcome.WITHDRAWN)
    assert s.requests == {others.id: others}


def test_client_lost_ends_its_leases_and_tells_the_board() -> None:
    s = Scheduler()
    board(s, "npu-1", "npu-2")
    first, second = grant(s), grant(s)
    for lease in (first, second):
        s.redeem(0.5, BOARD, lease.device.name, lease.ticket)
    effects = s.client_lost(1.0, ALICE)
    ended = of(effects, LeaseEnded)
    assert {e.lease.id for e in ended} == {first.id, second.id}
    assert all(e.outcome is LeaseOutcome.CLIENT_LOST and e.revoke for e in ended)
    assert s.leases == {}
    assert s.free_count("npu") == 2


def test_client_lost_hands_its_devices_to_other_clients_not_to_itself() -> None:
    s = Scheduler()
    board(s, "npu-1")
    grant(s)
    mine, _ = s.request(1.0, ALICE, "alice", "npu")
    effects = s.client_lost(2.0, ALICE)
    assert of(effects, Granted) == []
    assert only(effects, RequestEnded).request is mine
    assert s.leases == {}
    assert s.owned_by(ALICE) == set()
    assert s.devices["npu-1"].state is DeviceState.FREE


# --- drain, quarantine, tags ------------------------------------------------------------


def test_draining_device_keeps_its_lease_then_takes_no_new_one() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    effects = s.set_draining(1.0, "npu-1", True)
    assert only(effects, DeviceChanged).state is DeviceState.DRAINING
    assert lease.id in s.leases
    waiting, _ = s.request(2.0, BOB, "bob", "npu")
    effects = s.release(3.0, lease.id, "alice")
    assert of(effects, Granted) == []
    assert waiting.id in s.requests
    assert s.devices["npu-1"].state is DeviceState.DRAINING


def test_undrained_device_serves_the_waiting_request() -> None:
    s = Scheduler()
    board(s, "npu-1")
    s.set_draining(0.0, "npu-1", True)
    waiting, effects = s.request(1.0, BOB, "bob", "npu")
    assert of(effects, Granted) == []
    effects = s.set_draining(2.0, "npu-1", False)
    assert only(effects, Granted).lease.request is waiting


def test_draining_an_unknown_device_is_refused() -> None:
    with pytest.raises(NoSuchDevice):
        Scheduler().set_draining(0.0, "nope", True)


def test_quarantined_device_takes_no_lease_until_healthy() -> None:
    s = Scheduler()
    board(s, "npu-1")
    effects = s.set_health(0.0, BOARD, "npu-1", False, "too hot")
    change = only(effects, DeviceChanged)
    assert change.state is DeviceState.QUARANTINED
    assert "too hot" in change.why
    waiting, effects = s.request(1.0, ALICE, "alice", "npu")
    assert of(effects, Granted) == []
    effects = s.set_health(2.0, BOARD, "npu-1", True)
    assert only(effects, Granted).lease.request is waiting


def test_quarantine_keeps_the_current_lease() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    s.set_health(1.0, BOARD, "npu-1", False)
    assert lease.id in s.leases
    assert s.devices["npu-1"].state is DeviceState.QUARANTINED
    assert of(s.release(2.0, lease.id, "alice"), Granted) == []


def test_request_waits_for_a_device_with_all_its_tags() -> None:
    s = Scheduler()
    board(s, "plain")
    request, effects = s.request(0.0, ALICE, "alice", "npu", tags=["big", "fast"])
    assert of(effects, Granted) == []
    board(s, "big-only", tags=["big"])
    assert request.id in s.requests
    effects = s.register(1.0, BOARD, "both", "npu", "h", tags=["big", "fast", "extra"])
    assert only(effects, Granted).lease.device.name == "both"


def test_device_serves_only_requests_it_has_the_tags_for() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    tagged, _ = s.request(1.0, BOB, "bob", "npu", tags=["big"])
    plain, _ = s.request(2.0, "carol-conn", "carol", "npu")
    effects = s.release(3.0, lease.id, "alice")
    assert only(effects, Granted).lease.request is plain
    assert tagged.id in s.requests


def test_device_of_another_flavor_does_not_serve_a_request() -> None:
    s = Scheduler()
    board(s, "tvm-1", flavor="tvm")
    request, effects = s.request(0.0, ALICE, "alice", "npu")
    assert of(effects, Granted) == []


def test_new_request_gets_the_device_free_the_longest() -> None:
    s = Scheduler()
    board(s, "npu-1", "npu-2")
    first = grant(s)
    second = grant(s)
    s.release(1.0, second.id, "alice")
    s.release(2.0, first.id, "alice")
    assert grant(s, now=3.0).device is second.device


# --- queue order and positions ---------------------------------------------------------


def test_higher_priority_request_is_granted_first() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    low, _ = s.request(1.0, BOB, "bob", "npu", priority=0)
    high, _ = s.request(2.0, "carol-conn", "carol", "npu", priority=2)
    assert only(s.release(3.0, lease.id, "alice"), Granted).lease.request is high
    assert low.id in s.requests


def test_user_granted_recently_waits_behind_another_user() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    again, _ = s.request(1.0, ALICE, "alice", "npu")
    bob, _ = s.request(2.0, BOB, "bob", "npu")
    assert s.positions("npu") == {bob.id: 0, again.id: 1}
    assert only(s.release(3.0, lease.id, "alice"), Granted).lease.request is bob


def test_positions_are_current_after_each_change() -> None:
    s = Scheduler()
    board(s, "npu-1")
    lease = grant(s)
    a, _ = s.request(1.0, ALICE, "alice", "npu")
    b, _ = s.request(1.0, BOB, "bob", "npu")
    c, _ = s.request(1.0, "carol-conn", "carol", "npu")
    assert s.positions("npu") == {b.id: 0, c.id: 1, a.id: 2}
    assert [r.id for r in s.waiting("npu")] == [b.id, c.id, a.id]
    s.cancel(2.0, b.id, "bob")
    assert s.positions("npu") == {c.id: 0, a.id: 1}
    assert s.position(a.id) == 1
    d, _ = s.request(3.0, "dave-conn", "dave", "npu", priority=2)
    assert s.positions("npu") == {d.id: 0, c.id: 1, a.id: 2}
    s.release(4.0, lease.id, "alice")
    assert s.positions("npu") == {c.id: 0, a.id: 1}
    for request_id, position in s.positions("npu").items():
        assert s.position(request_id) == position


def test_position_of_a_request_not_waiting_is_refused() -> None:
    with pytest.raises(NoSuchRequest):
        Scheduler().position("req-1")


def test_ended_request_reports_the_position_it_had() -> None:
    s = Scheduler()
    s.request(0.0, ALICE, "alice", "npu")
    bob, _ = s.request(0.0, BOB, "bob", "npu")
    assert only(s.cancel(1.0, bob.id, "bob"), RequestEnded).position == 1


def test_a_proxy_may_check_a_ticket_without_using_it_up() -> None:
    s = Scheduler()
    board(s, "npu-1", "npu-2")
    lease = grant(s)
    other = "npu-2" if lease.device.name == "npu-1" else "npu-1"
    assert s.check_ticket(BOARD, lease.device.name, lease.ticket) is lease
    assert s.check_ticket(BOARD, lease.device.name, lease.ticket) is lease
    assert not lease.redeemed
    with pytest.raises(NoSuchDevice, match=f"not granted for device {other}"):
        s.check_ticket(BOARD, other, lease.ticket)
    with pytest.raises(TicketRejected, match="not valid"):
        s.check_ticket(BOARD, lease.device.name, "guess")
    with pytest.raises(NoSuchDevice):
        s.check_ticket("impostor", lease.device.name, lease.ticket)
    # the board then redeems it, once; checked again, it is used up
    assert s.redeem(1.0, BOARD, lease.device.name, lease.ticket) is lease
    with pytest.raises(TicketRejected, match="not valid"):
        s.check_ticket(BOARD, lease.device.name, lease.ticket)
