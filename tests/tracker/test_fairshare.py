"""Fair share in the scheduling core: boards shared in proportion to shares over time,
the user who used less going first, usage that decays, resets, and survives a rebase."""

from __future__ import annotations

import math

import pytest

from compassd.tracker.records import Granted, LeaseEnded, Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.usage import UsageLedger, effective_shares

DAY = 86400.0
HOUR = 3600.0


def grants(effects: list) -> list[Granted]:
    return [e for e in effects if isinstance(e, Granted)]


def test_three_users_with_shares_1_1_2_get_board_time_in_proportion_over_a_day() -> None:
    """Steady streams of one-minute requests to 2 boards for a simulated day: each user's
    board time ends within 5% of their share."""
    shares = {"ann": 1.0, "ben": 1.0, "cat": 2.0}
    s = Scheduler(Policy(default_lease=60.0, max_lease=60.0, claim_timeout=None,
                         fair_share_half_life=DAY, shares=shares))
    for name in ("b0", "b1"):
        s.register(0.0, "board", name, "npu", f"{name}:1")
    held = {user: 0.0 for user in shares}
    now = 0.0
    # Each user keeps two requests waiting, always.
    for user in shares:
        for _ in range(2):
            s.request(now, user, user, "npu")
    steps = 0
    while now < DAY:
        steps += 1
        assert steps < 10_000
        deadline = s.next_deadline()
        assert deadline is not None
        now = deadline
        for effect in s.advance(now):
            if isinstance(effect, LeaseEnded):
                user = effect.lease.user
                held[user] += now - effect.lease.granted_at
                for granted in grants(s.request(now, user, user, "npu")[1]):
                    assert granted.lease.seconds == 60.0
    total = sum(held.values())
    assert total == pytest.approx(2 * DAY, rel=0.01)
    for user, share in shares.items():
        wanted = share / sum(shares.values())
        assert abs(held[user] / total - wanted) <= 0.05 * wanted, (user, held)


def test_turn_taking_with_half_life_zero_ignores_shares() -> None:
    shares = {"ann": 1.0, "ben": 1.0, "cat": 2.0}
    s = Scheduler(Policy(default_lease=60.0, claim_timeout=None,
                         fair_share_half_life=0.0, shares=shares))
    s.register(0.0, "board", "b0", "npu", "b0:1")
    held = dict.fromkeys(shares, 0)
    for user in shares:
        s.request(0.0, user, user, "npu")
    now = 0.0
    for _ in range(300):
        now = s.next_deadline() or now
        for effect in s.advance(now):
            if isinstance(effect, LeaseEnded):
                held[effect.lease.user] += 1
                s.request(now, effect.lease.user, effect.lease.user, "npu")
    assert max(held.values()) - min(held.values()) <= 1


def one_board(half_life: float) -> Scheduler:
    s = Scheduler(Policy(default_lease=600.0, max_lease=4 * HOUR, claim_timeout=None,
                         fair_share_half_life=half_life))
    s.register(0.0, "board", "b0", "npu", "b0:1")
    return s


def hours_then_short_runs(s: Scheduler) -> tuple[float, str]:
    """Alice holds the board for three hours; then Bob makes ten 30-second runs. Then,
    while Bob holds it once more, Alice asks first and Bob second. Return when Bob's
    lease ends and its id."""
    request, effects = s.request(0.0, "alice", "alice", "npu", lease=3 * HOUR)
    (lease,) = [g.lease for g in grants(effects)]
    now = 3 * HOUR
    s.release(now, lease.id, "alice")
    for _ in range(10):
        _, effects = s.request(now, "bob", "bob", "npu", lease=30.0)
        (lease,) = [g.lease for g in grants(effects)]
        now += 30.0
        s.release(now, lease.id, "bob")
    _, effects = s.request(now, "bob", "bob", "npu", lease=30.0)
    (held,) = [g.lease for g in grants(effects)]
    s.request(now + 1, "alice", "alice", "npu")
    s.request(now + 2, "bob", "bob", "npu")
    return now + 30.0, held.id


def test_the_user_who_made_short_runs_goes_before_the_one_who_held_the_board_for_hours() -> None:
    s = one_board(DAY)
    now, lease_id = hours_then_short_runs(s)
    assert s.usage("npu", "alice", now) > 10_000
    assert s.usage("npu", "bob", now) < 400
    (granted,) = grants(s.release(now, lease_id, "bob"))
    assert granted.lease.user == "bob"


def test_with_half_life_zero_the_same_story_takes_turns() -> None:
    s = one_board(0.0)
    now, lease_id = hours_then_short_runs(s)
    (granted,) = grants(s.release(now, lease_id, "bob"))
    assert granted.lease.user == "alice"


def test_a_running_lease_counts_as_it_runs() -> None:
    """Alice's lease is still running; Bob's ended. At equal priority Bob, who used
    less, is ahead of Alice in the queue, though Alice asked first."""
    s = Scheduler(Policy(default_lease=HOUR, claim_timeout=None, fair_share_half_life=DAY))
    s.register(0.0, "board", "b0", "npu", "b0:1")
    s.register(0.0, "board", "b1", "npu", "b1:1")
    _, e1 = s.request(0.0, "alice", "alice", "npu")
    _, e2 = s.request(0.0, "bob", "bob", "npu", lease=60.0)
    bob_lease = grants(e2)[0].lease
    s.release(60.0, bob_lease.id, "bob")
    s.request(59.0 * 60, "carol", "carol", "npu", lease=10.0)  # takes b1
    a, _ = s.request(59.5 * 60, "alice", "alice", "npu")
    b, _ = s.request(59.6 * 60, "bob", "bob", "npu")
    assert s.usage("npu", "alice", 59.6 * 60) == pytest.approx(
        DAY / math.log(2) * (1 - 2 ** (-59.6 * 60 / DAY)), rel=1e-9
    )
    assert [r.id for r in s.waiting("npu", 59.6 * 60)] == [b.id, a.id]
    assert s.position(b.id) == 0 and s.position(a.id) == 1


def test_usage_decays_by_half_each_half_life() -> None:
    ledger = UsageLedger(100.0)
    ledger.started("ann", 0.0)
    ledger.ended("ann", 0.0, 50.0)
    used = ledger.usage("ann", 50.0)
    assert used == pytest.approx(100.0 / math.log(2) * (1 - 2 ** -0.5))
    assert ledger.usage("ann", 150.0) == pytest.approx(used / 2)
    assert ledger.usage("ann", 1050.0) == pytest.approx(used / 1024)


def test_the_order_is_kept_across_a_rebase_of_the_epoch() -> None:
    """After many half-lives the ledger moves its epoch; usage and order stay right."""
    s = Scheduler(Policy(default_lease=30.0, max_lease=30.0, claim_timeout=None,
                         fair_share_half_life=1.0))
    s.register(0.0, "board", "b0", "npu", "b0:1")
    now = 0.0
    held = {"ann": 0, "ben": 0}
    for user in held:
        s.request(now, user, user, "npu")
    for _ in range(200):  # 200 leases of 30 half-lives each: several rebases
        now = s.next_deadline() or now
        for effect in s.advance(now):
            if isinstance(effect, LeaseEnded):
                held[effect.lease.user] += 1
                s.request(now, effect.lease.user, effect.lease.user, "npu")
    assert abs(held["ann"] - held["ben"]) <= 1
    for user in held:
        assert 0 < s.usage("npu", user, now) < 2.0


def test_reset_puts_a_heavy_user_back_in_line() -> None:
    s = one_board(DAY)
    now, lease_id = hours_then_short_runs(s)
    s.reset_usage(now, "alice")
    assert s.usage("npu", "alice", now) == 0.0
    (granted,) = grants(s.release(now, lease_id, "bob"))
    assert granted.lease.user == "alice"


def test_a_reset_while_a_lease_runs_forgets_the_time_before_the_reset() -> None:
    """An admin resets Ann's usage an hour into her lease: when it ends an hour later,
    only the hour after the reset counts, as it did while the lease ran."""
    ledger = UsageLedger(DAY)
    ledger.started("ann", 0.0)
    ledger.set_usage("ann", 0.0, HOUR)
    running = ledger.usage("ann", 2 * HOUR)
    ledger.ended("ann", 0.0, 2 * HOUR)
    hour = DAY / math.log(2) * (1 - 2 ** (-HOUR / DAY))
    assert running == pytest.approx(hour, rel=1e-9)
    assert ledger.usage("ann", 2 * HOUR) == pytest.approx(hour, rel=1e-9)
    assert ledger.settled("ann", 2 * HOUR) == pytest.approx(hour, rel=1e-9)


def test_a_reset_counts_each_running_lease_from_the_reset_and_a_later_one_from_its_grant(
) -> None:
    ledger = UsageLedger(DAY)
    ledger.started("ann", 0.0)
    ledger.started("ann", 100.0)
    ledger.set_usage("ann", 0.0, 1000.0)
    ledger.started("ann", 1500.0)
    for granted_at in (0.0, 100.0, 1500.0):
        ledger.ended("ann", granted_at, 2000.0)
    k = DAY / math.log(2)
    expected = k * (2 * (1 - 2 ** (-1000.0 / DAY)) + (1 - 2 ** (-500.0 / DAY)))
    assert ledger.usage("ann", 2000.0) == pytest.approx(expected, rel=1e-9)
    # Once those leases ended, a new lease counts from its own grant again.
    ledger.started("ann", 3000.0)
    ledger.ended("ann", 3000.0, 4000.0)
    assert ledger.usage("ann", 4000.0) == pytest.approx(
        expected * 2 ** (-2000.0 / DAY) + k * (1 - 2 ** (-1000.0 / DAY)), rel=1e-9)


def test_compass_usage_reset_during_a_lease_holds_when_the_lease_ends() -> None:
    s = one_board(DAY)
    _, e = s.request(0.0, "alice", "alice", "npu", lease=4 * HOUR)
    (granted,) = grants(e)
    s.reset_usage(3 * HOUR, "alice")
    s.release(3 * HOUR + 60.0, granted.lease.id, "alice")
    assert s.usage("npu", "alice", 3 * HOUR + 60.0) == pytest.approx(
        DAY / math.log(2) * (1 - 2 ** (-60.0 / DAY)), rel=1e-9)


def test_new_shares_reorder_the_waiting() -> None:
    s = one_board(DAY)
    now, lease_id = hours_then_short_runs(s)
    s.set_shares(now, {"alice": 1000.0})
    (granted,) = grants(s.release(now, lease_id, "bob"))
    assert granted.lease.user == "alice"


def test_accounts_split_their_share_among_members() -> None:
    shares = effective_shares(
        {"ann": (1.0, "physics"), "ben": (3.0, "physics"), "cat": (2.0, None),
         "dan": (1.0, "chem")},
        {"physics": 4.0},
    )
    assert shares == {"ann": 1.0, "ben": 3.0, "cat": 2.0, "dan": 1.0}
    assert effective_shares({"ann": (1.0, "p"), "ben": (1.0, "p")}, {"p": 1.0}) == {
        "ann": 0.5, "ben": 0.5}


def test_a_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError, match="not positive"):
        UsageLedger(0.0)


def test_each_waiting_request_is_told_why_it_is_where_it_is() -> None:
    s = one_board(DAY)
    now, _ = hours_then_short_runs(s)  # alice (3 h) then bob (5 min) wait, bob holds
    s.request(now, "carol", "carol", "npu", priority=5)
    s.request(now, "bob2", "bob", "npu")
    waiting = s.waiting("npu", now)
    assert [(r.user, r.priority) for r in waiting] == [
        ("carol", 5), ("bob", 1), ("alice", 1), ("bob", 1)]
    why = s.reasons("npu", now)
    assert [why[r.id] for r in waiting] == [
        "next in line",
        "behind carol: priority 5 > 1",
        "behind bob: they used 0.1 board-hours lately, you used 2.9",
        f"behind alice: users take one turn each, and your {waiting[1].id} is ahead",
    ]


def test_with_turns_the_reason_is_the_turn() -> None:
    s = one_board(0.0)
    now, _ = hours_then_short_runs(s)
    (alice, bob) = s.waiting("npu", now)
    assert s.reasons("npu", now)[bob.id] == (
        "behind alice: their turn (users take turns; you were granted since)")
