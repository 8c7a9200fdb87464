"""The fair queue's order, positions and removal, on plain requests (no scheduler)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compassd.tracker.fairqueue import FairQueue

ANY = ("compassd", frozenset())


@attrs.frozen
class Req:
    id: str
    user: str
    priority: int
    arrival: int
    needs: tuple[str, frozenset[str]] = ANY


def make(*specs: tuple[str, int] | tuple[str, int, frozenset[str]]) -> FairQueue[Req]:
    """A queue of requests (user, priority[, tags]) arriving in the given order, ids r1.."""
    queue: FairQueue[Req] = FairQueue()
    for n, spec in enumerate(specs, start=1):
        tags = spec[2] if len(spec) == 3 else frozenset()
        queue.add(Req(f"r{n}", spec[0], spec[1], n, ("compassd", tags)))
    return queue


def everything(needs: tuple[str, frozenset[str]]) -> bool:
    return True


def ids(requests: list[Req]) -> list[str]:
    return [r.id for r in requests]


def serve_all(queue: FairQueue[Req]) -> list[str]:
    """Grant the best request repeatedly until the queue is empty: the grant order."""
    return serve_all_from(queue, 0)


def serve_all_from(queue: FairQueue[Req], grants: int) -> list[str]:
    served = []
    for sequence in range(grants + 1, grants + len(queue) + 1):
        best = queue.best_for(everything)
        assert best is not None
        queue.granted(best.user, sequence)
        queue.remove(best.id)
        served.append(best.id)
    return served


def test_empty_queue_has_no_best_and_no_order() -> None:
    queue: FairQueue[Req] = FairQueue()
    assert queue.best_for(everything) is None
    assert queue.order() == []
    assert queue.positions() == {}
    assert len(queue) == 0


def test_higher_priority_is_served_before_earlier_arrivals() -> None:
    queue = make(("alice", 0), ("bob", 1), ("carol", 2))
    assert queue.best_for(everything).id == "r3"
    assert ids(queue.order()) == ["r3", "r2", "r1"]


def test_one_user_is_served_in_arrival_order() -> None:
    queue = make(("alice", 1), ("alice", 1), ("alice", 1))
    assert ids(queue.order()) == ["r1", "r2", "r3"]
    assert serve_all(queue) == ["r1", "r2", "r3"]


def test_users_never_granted_go_in_order_of_their_first_arrival() -> None:
    queue = make(("bob", 1), ("alice", 1), ("bob", 1))
    assert queue.best_for(everything).id == "r1"
    # Round robin: bob's second waits behind alice's first.
    assert ids(queue.order()) == ["r1", "r2", "r3"]


def test_users_take_turns_nobody_waits_behind_anothers_second_request() -> None:
    queue = make(("alice", 1), ("alice", 1), ("alice", 1), ("bob", 1), ("bob", 1))
    assert ids(queue.order()) == ["r1", "r4", "r2", "r5", "r3"]
    assert serve_all(queue) == ["r1", "r4", "r2", "r5", "r3"]


def test_never_granted_user_goes_before_a_user_granted_earlier() -> None:
    queue = make(("alice", 1), ("bob", 1))
    queue.granted("alice", 1)
    assert queue.best_for(everything).id == "r2"
    assert ids(queue.order()) == ["r2", "r1"]


def test_user_granted_least_recently_goes_first() -> None:
    queue = make(("alice", 1), ("bob", 1))
    queue.granted("bob", 1)
    queue.granted("alice", 2)
    assert queue.best_for(everything).id == "r2"
    queue.granted("bob", 3)
    assert queue.best_for(everything).id == "r1"
    assert ids(queue.order()) == ["r1", "r2"]


def test_recency_does_not_beat_priority() -> None:
    queue = make(("alice", 1), ("bob", 2))
    queue.granted("bob", 1)
    assert queue.best_for(everything).id == "r2"


def test_best_for_only_considers_needs_the_device_can_serve() -> None:
    gpu = frozenset({"big"})
    queue = make(("alice", 2, gpu), ("bob", 1))
    assert queue.best_for(lambda needs: not needs[1]).id == "r2"
    assert queue.best_for(lambda needs: True).id == "r1"
    assert queue.best_for(lambda needs: False) is None


def test_best_for_compares_across_groups_by_priority_recency_then_arrival() -> None:
    tagged = frozenset({"x"})
    queue = make(("alice", 1, tagged), ("bob", 1))
    queue.granted("alice", 1)
    # Both groups have a priority-1 head; bob was never granted, so bob goes first
    # even though alice's request arrived earlier and is in another group.
    assert queue.best_for(everything).id == "r2"


def test_positions_follow_order_and_zero_is_next() -> None:
    queue = make(("alice", 1), ("alice", 1), ("bob", 1), ("carol", 2))
    assert queue.positions() == {"r4": 0, "r1": 1, "r3": 2, "r2": 3}
    for request_id, position in queue.positions().items():
        assert queue.position_of(request_id) == position


def test_positions_move_up_when_a_request_ahead_is_removed() -> None:
    queue = make(("alice", 1), ("bob", 1), ("carol", 1))
    assert queue.position_of("r3") == 2
    removed = queue.remove("r1")
    assert removed.id == "r1"
    assert queue.position_of("r3") == 1
    assert queue.positions() == {"r2": 0, "r3": 1}


def test_removing_a_users_head_keeps_their_turn() -> None:
    queue = make(("alice", 1), ("bob", 1), ("alice", 1))
    queue.remove("r1")
    # alice's remaining request now arrived after bob's first: bob goes first.
    assert queue.best_for(everything).id == "r2"
    assert serve_all(queue) == ["r2", "r3"]


def test_removing_a_non_head_request_leaves_the_head_in_place() -> None:
    queue = make(("alice", 1), ("alice", 1), ("bob", 1))
    queue.remove("r2")
    assert serve_all(queue) == ["r1", "r3"]


def test_removed_request_is_gone_from_membership_lookup_and_order() -> None:
    queue = make(("alice", 1), ("bob", 0))
    queue.remove("r2")
    assert "r2" not in queue
    assert queue.get("r2") is None
    assert "r1" in queue
    assert ids(list(queue)) == ["r1"]
    assert ids(queue.order()) == ["r1"]
    with pytest.raises(KeyError):
        queue.remove("r2")


def test_removing_every_request_empties_the_queue_and_it_can_be_refilled() -> None:
    queue = make(("alice", 1), ("bob", 2))
    queue.remove("r1")
    queue.remove("r2")
    assert len(queue) == 0
    assert queue.best_for(everything) is None
    queue.add(Req("r3", "carol", 1, 3))
    assert queue.best_for(everything).id == "r3"
    assert queue.positions() == {"r3": 0}


def expected_best(
    waiting: dict[str, Req], recency: dict[str, int], ok: frozenset[frozenset[str]]
) -> str | None:
    eligible = [r for r in waiting.values() if r.needs[1] in ok]
    if not eligible:
        return None
    return min(eligible, key=lambda r: (-r.priority, recency.get(r.user, -1), r.arrival)).id


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["alice", "bob", "carol"]),
            st.integers(0, 2),
            st.sampled_from([frozenset(), frozenset({"x"}), frozenset({"y"})]),
        ),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(
            st.just("grant"),
            st.sampled_from(
                [
                    frozenset({frozenset()}),
                    frozenset({frozenset(), frozenset({"x"})}),
                    frozenset({frozenset(), frozenset({"x"}), frozenset({"y"})}),
                ]
            ),
        ),
    ),
    max_size=40,
)


@given(operations)
def test_best_order_and_positions_agree_with_a_brute_force_reading_of_the_rules(
    ops: list[tuple],
) -> None:
    queue: FairQueue[Req] = FairQueue()
    waiting: dict[str, Req] = {}
    recency: dict[str, int] = {}
    arrivals = grants = 0
    for op in ops:
        if op[0] == "add":
            arrivals += 1
            request = Req(f"r{arrivals}", op[1], op[2], arrivals, ("compassd", op[3]))
            queue.add(request)
            waiting[request.id] = request
        elif op[0] == "remove" and waiting:
            victim = sorted(waiting)[op[1] % len(waiting)]
            queue.remove(victim)
            del waiting[victim]
        elif op[0] == "grant":
            ok = op[1]
            best = queue.best_for(lambda needs, ok=ok: needs[1] in ok)
            assert (best.id if best else None) == expected_best(waiting, recency, ok)
            if best is not None:
                grants += 1
                queue.granted(best.user, grants)
                recency[best.user] = grants
                queue.remove(best.id)
                del waiting[best.id]
        assert len(queue) == len(waiting)
        order = queue.order()
        assert sorted(ids(order)) == sorted(waiting)
        positions = queue.positions()
        for request_id in waiting:
            assert queue.position_of(request_id) == positions[request_id]
        # At one priority, order() is the order a device serving every need would grant
        # them in. (Across priorities it is not: grants at a higher priority change who
        # goes first at a lower one, and order() does not foresee that.)
        if len({r.priority for r in waiting.values()}) > 1:
            continue
        replay: FairQueue[Req] = FairQueue(recency=dict(recency))
        for request in sorted(waiting.values(), key=lambda r: r.arrival):
            replay.add(request)
        assert serve_all_from(replay, grants) == ids(order)
