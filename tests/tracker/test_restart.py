"""The scheduler across a restart (compassd.tracker.restart, through the store's records
in compassd.tracker.persist): state comes back, clients re-attach, the order holds."""

from __future__ import annotations

import hashlib

import pytest

from compassd.errors import NoSuchRequest, NotYourLease
from compassd.tracker import persist
from compassd.tracker.records import (
    DeviceState,
    Granted,
    LeaseEnded,
    LeaseOutcome,
    Policy,
    RequestEnded,
    RequestOutcome,
)
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.store import Snapshot

from .test_scheduler import of, only

GRACE = 60.0


def h(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


TURNS = Policy(claim_timeout=None, fair_share_half_life=0)
"""Users take turns: the recency of their grants is what the store keeps."""
FAIR = Policy(claim_timeout=None)
"""Fair share (a day's half-life): their decayed board time is what it keeps."""


def before_restart(policy: Policy = TURNS) -> tuple[Scheduler, list[str]]:
    """One board, holder's lease active, three requests waiting (two users, two
    priorities); also a history of grants so fair share has something to remember."""
    s = Scheduler(policy=policy, id_prefix="1.")
    s.register(0, "board", "npu-1", "x2", "10.0.0.5:9091", tags=["fast"])
    # Bob was granted after alice, and held the board longer: at one priority alice
    # goes first, whether users take turns or share by usage.
    for i, user in enumerate(["alice", "bob"]):
        _, eff = s.request(1 + i, f"{user}-old", user, "x2", secret=h(f"{user}-old"))
        s.release(1.5 + 5 * i, only(eff, Granted).lease.id, user)
    _, eff = s.request(10, "holder", "carol", "x2", secret=h("holder"), lease=600)
    waiting = []
    for when, owner, user, priority in [(11, "c1", "bob", 1), (12, "c2", "alice", 1),
                                        (13, "c3", "bob", 5)]:
        request, _ = s.request(when, owner, user, "x2", priority=priority, secret=h(owner))
        waiting.append(request.id)
    return s, waiting


def snapshot_of(s: Scheduler, epoch: int = 2, at: float = 100.0) -> Snapshot:
    """What the store holds after journaling C{s} (the records, through persist), its
    usage written at C{at}."""
    used = [(key, user) for key in s.usage_keys() for user in s.usage_users(key)]
    return Snapshot(live=persist.live_state(s), epoch=epoch,
                    meta={**persist.recency_meta(s, s.keys()),
                          **persist.usage_meta(s, used, at)})


def grant_order(s: Scheduler, now: float, lease_id: str, user: str) -> list[str]:
    order = []
    effects = s.release(now, lease_id, user)
    for _ in range(5):
        granted = of(effects, Granted)
        if not granted:
            break
        lease = granted[0].lease
        order.append(lease.request.id)
        effects = s.release(now, lease.id, lease.user)
    return order


def restarted(s: Scheduler, now: float = 100.0, at: float | None = None
              ) -> tuple[Scheduler, list]:
    again = Scheduler(policy=s.policy, id_prefix="2.")
    snapshot = snapshot_of(s, at=now if at is None else at)
    effects = persist.restore(again, snapshot, now, GRACE)
    return again, effects


@pytest.mark.parametrize("policy", [TURNS, FAIR], ids=["turns", "fair-share"])
def test_the_lease_goes_on_and_the_waiting_requests_are_granted_in_the_same_order(
        policy: Policy):
    reference, waiting = before_restart(policy)
    [holder] = reference.leases.values()
    expected = grant_order(reference, 100, holder.id, "carol")
    assert expected == [waiting[2], waiting[1], waiting[0]]  # priority, then fair share

    old, _ = before_restart(policy)
    s, _ = restarted(old)
    assert s.devices["npu-1"].state is DeviceState.OFFLINE
    assert s.leases[holder.id].deadline == holder.deadline
    # The board registers again: its lease goes on (busy), nothing is granted.
    effects = s.register(101, "board-2", "npu-1", "x2", "10.0.0.5:9091", tags=["fast"])
    assert not of(effects, Granted) and not of(effects, LeaseEnded)
    assert s.devices["npu-1"].state is DeviceState.BUSY
    # The clients come back with their secrets.
    for owner, ident in [("c1", waiting[0]), ("c2", waiting[1]), ("c3", waiting[2]),
                         ("holder", holder.id)]:
        s.reattach(102, f"new-{owner}", ident, s.requests[ident].user if ident in
                   s.requests else "carol", h(owner))

    assert grant_order(s, 103, holder.id, "carol") == expected


def test_a_device_waits_for_the_detached_request_ahead_rather_than_skip_it():
    old, waiting = before_restart()
    [holder] = old.leases.values()
    old.release(50, holder.id, "carol")  # bob's priority-5 request holds the board now
    s, _ = restarted(old)
    [lease] = s.leases.values()
    s.register(101, "board-2", "npu-1", "x2", "a:1", tags=["fast"])
    s.release(102, lease.id, lease.user)  # the device is free; the best request is away
    assert s.devices["npu-1"].state is DeviceState.FREE
    request, effects = s.request(103, "bob-2", "bob", "x2", priority=1)
    assert not of(effects, Granted)  # bob's new request does not jump the queue

    _, effects = s.reattach(104, "new-c2", waiting[1], "alice", h("c2"))

    assert only(effects, Granted).lease.request.id == waiting[1]
    assert only(effects, Granted).lease.owner == "new-c2"


def test_requests_and_leases_whose_clients_do_not_come_back_end_after_the_grace():
    old, waiting = before_restart()
    [holder] = old.leases.values()
    s, _ = restarted(old)
    s.register(101, "board-2", "npu-1", "x2", "a:1", tags=["fast"])
    s.reattach(101, "new-c1", waiting[0], "bob", h("c1"))

    effects = s.advance(100 + GRACE)

    ended = {e.request.id: e for e in of(effects, RequestEnded)}
    assert set(ended) == {waiting[1], waiting[2]}
    assert ended[waiting[2]].outcome is RequestOutcome.WITHDRAWN
    assert ended[waiting[2]].message == (
        f"Request {waiting[2]} was withdrawn: its client did not re-attach within 60 s of"
        " the tracker's restart.")
    lease_end = only(effects, LeaseEnded)
    assert (lease_end.lease.id, lease_end.outcome) == (holder.id, LeaseOutcome.CLIENT_LOST)
    # The one who came back gets the board.
    assert only(effects, Granted).lease.request.id == waiting[0]


def test_reattaching_needs_the_same_user_and_secret():
    old, waiting = before_restart()
    s, _ = restarted(old)
    with pytest.raises(NotYourLease):
        s.reattach(101, "mallory", waiting[0], "bob", h("guess"))
    with pytest.raises(NotYourLease):
        s.reattach(101, "mallory", waiting[0], "mallory", h("c1"))
    with pytest.raises(NoSuchRequest):
        s.reattach(101, "x", "req-9.9", "bob", h("c1"))
    request, _ = s.reattach(101, "new-c1", waiting[0], "bob", h("c1"))
    assert request.owner == "new-c1"
    with pytest.raises(NotYourLease):  # once re-attached, nobody else takes it
        s.reattach(102, "other", waiting[0], "bob", h("c1"))


def test_a_lease_whose_ticket_was_not_used_can_still_be_claimed_with_it():
    s0 = Scheduler(policy=Policy(claim_timeout=60), new_ticket=lambda: "the-ticket")
    s0.register(0, "board", "npu-1", "x2", "a:1")
    _, effects = s0.request(1, "c", "alice", "x2", secret=h("c"))
    lease = only(effects, Granted).lease
    s, _ = restarted(s0, now=10)
    s.register(11, "board-2", "npu-1", "x2", "a:1")

    claimed = s.redeem(12, "board-2", "npu-1", "the-ticket")

    assert claimed.id == lease.id and claimed.redeemed


def test_an_unclaimed_restored_lease_gets_a_fresh_claim_window():
    s0 = Scheduler(policy=Policy(claim_timeout=60))
    s0.register(0, "board", "npu-1", "x2", "a:1")
    s0.request(1, "c", "alice", "x2", lease=3600, secret=h("c"))
    s, _ = restarted(s0, now=55)
    s.register(56, "board-2", "npu-1", "x2", "a:1")
    s.reattach(56, "new-c", next(iter(s.leases)), "alice", h("c"))
    assert not of(s.advance(100), LeaseEnded)
    assert only(s.advance(115), LeaseEnded).outcome is LeaseOutcome.UNCLAIMED


def test_a_drained_device_stays_drained_after_the_restart_and_its_board_returning():
    s0 = Scheduler()
    s0.register(0, "board", "npu-1", "x2", "a:1")
    s0.set_draining(1, "npu-1", True)
    s, _ = restarted(s0)
    s.register(101, "board-2", "npu-1", "x2", "a:1")
    assert s.devices["npu-1"].state is DeviceState.DRAINING
    _, effects = s.request(102, "c", "alice", "x2")
    assert not of(effects, Granted)


def test_a_board_that_says_what_it_serves_ends_a_lease_it_no_longer_has():
    old, _ = before_restart()
    [holder] = old.leases.values()
    s, _ = restarted(old)
    effects = s.register(101, "board-2", "npu-1", "x2", "a:1", tags=["fast"], reports=True)
    ended = only(effects, LeaseEnded)
    assert (ended.lease.id, ended.outcome) == (holder.id, LeaseOutcome.DEVICE_LOST)
    assert "came back without it after the tracker restarted" in ended.message


def test_ids_made_after_the_restart_never_repeat_earlier_ones():
    old, waiting = before_restart()
    s, _ = restarted(old)
    earlier = set(waiting) | set(old.leases)
    request, _ = s.request(101, "d", "dave", "x2")
    assert request.id.startswith("req-2.") and request.id not in earlier
    assert request.arrival > max(old.requests[w].arrival for w in waiting)


def test_fair_share_usage_comes_back_decayed_and_a_held_lease_counts_from_its_grant():
    old, _ = before_restart(FAIR)
    half_life = FAIR.fair_share_half_life
    stored_at = 20.0
    s, _ = restarted(old, now=stored_at + half_life, at=stored_at)
    now = stored_at + half_life
    # Ended leases: what was stored, halved by one half-life spent away.
    assert s.usage("x2", "bob", now) == pytest.approx(old.usage("x2", "bob", stored_at) / 2)
    assert s.usage("x2", "alice", now) == pytest.approx(
        old.usage("x2", "alice", stored_at) / 2)
    # Carol's lease (granted at 10) ran all along: it counts from its grant.
    assert s.usage("x2", "carol", now) == pytest.approx(old.usage("x2", "carol", now))
    assert s.usage("x2", "carol", now) > 0.6 * half_life


def test_a_reset_usage_is_stored_and_stays_reset_after_a_restart():
    old, _ = before_restart(FAIR)
    old.reset_usage(50, "bob")
    s, _ = restarted(old)
    assert s.usage("x2", "bob", 100) == 0.0
    assert s.usage("x2", "alice", 100) > 0.0


def test_usage_is_not_brought_back_when_users_take_turns():
    old, _ = before_restart(FAIR)
    again = Scheduler(policy=TURNS)
    persist.restore(again, snapshot_of(old), 100, GRACE)
    assert again.usage_keys() == [] and again.usage("x2", "bob", 100) == 0.0
