"""The scheduler under random sequences of everything that can happen to it.

A model kept by the test (devices it registered, requests it made, grants it saw) is
compared with the scheduler's effects after every step: no device is leased twice, every
grant goes to the request the rules pick (found here by brute force), every request ends
exactly once and its owner is told, and at one priority users take turns (half-life 0)
or the user with the least decayed usage per share goes first (fair share).
"""

from __future__ import annotations

import math

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from compassd.protocol.errors import DeviceConflict, NoSuchKey, TicketRejected
from compassd.tracker.records import (
    COMPASSD,
    DeviceChanged,
    DeviceState,
    Effect,
    Granted,
    LeaseEnded,
    LeaseOutcome,
    Policy,
    QueueChanged,
    Request,
    RequestEnded,
    RequestOutcome,
)
from compassd.tracker.scheduler import Scheduler

NAMES = ["d0", "d1", "d2"]
KEYS = ["k1", "k2"]
USERS = ["alice", "bob", "carol"]
BOARDS = ["A", "B"]
# Most requests need nothing special and most devices have something, so that most
# requests can be served by some device.
WANTS = st.sampled_from([frozenset(), frozenset(), frozenset(), frozenset({"x"})])
HAS = st.sampled_from([frozenset(), frozenset({"x"}), frozenset({"x", "y"})])
NEVER = -1


@attrs.define
class ModelDevice:
    key: str
    owner: str
    tags: frozenset[str]
    healthy: bool = True
    draining: bool = False
    online: bool = True
    lease: str | None = None

    @property
    def grantable(self) -> bool:
        return self.online and self.healthy and not self.draining and self.lease is None

    def can_serve(self, request: Request) -> bool:
        return request.key == self.key and request.tags <= self.tags


class SchedulerMachine(RuleBasedStateMachine):
    HALF_LIFE = 0.0
    SHARES: dict[str, float] = {}

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(
            policy=Policy(
                default_lease=20.0,
                max_lease=40.0,
                key_max_lease={"k2": 15.0},
                claim_timeout=10.0,
                forget_offline=50.0,
                fair_share_half_life=self.HALF_LIFE,
                shares=self.SHARES,
            )
        )
        self.spans: dict[str, tuple[str, str, float]] = {}  # lease -> key, user, start
        self.ended_spans: list[tuple[str, str, float, float]] = []
        self.now = 0.0
        self.devices: dict[str, ModelDevice] = {}
        self.waiting: dict[str, Request] = {}
        self.leases: dict[str, tuple[str, str]] = {}  # lease id -> (device, request id)
        self.made: dict[str, str] = {}  # request id -> owner
        self.ended: dict[str, list[RequestOutcome]] = {}
        self.lease_ends: dict[str, list[LeaseOutcome]] = {}
        self.grants = 0
        self.recency: dict[tuple[str, str], int] = {}  # (key, user) -> last grant
        self.grants_before: dict[str, int] = {}  # request id -> grants when it arrived
        self.board_gen = {b: 0 for b in BOARDS}
        self.client_gen = {u: 0 for u in USERS}

    def board(self, b: str) -> str:
        return f"board-{b}#{self.board_gen[b]}"

    def client(self, user: str) -> str:
        return f"{user}#{self.client_gen[user]}"

    # --- applying effects to the model ----------------------------------------------

    def apply(
        self,
        effects: list[Effect],
        requests_may_end: frozenset[RequestOutcome] = frozenset(),
        leases_may_end: frozenset[LeaseOutcome] = frozenset(),
    ) -> None:
        for effect in effects:
            if isinstance(effect, Granted):
                self.check_grant(effect)
            elif isinstance(effect, RequestEnded):
                request = effect.request
                assert effect.outcome in requests_may_end, effect
                assert request.id in self.waiting, f"{request.id} ended but was not waiting"
                assert request.owner == self.made[request.id]
                if effect.outcome is RequestOutcome.TIMED_OUT:
                    assert request.deadline is not None and request.deadline <= self.now
                self.end_request(request.id, effect.outcome)
            elif isinstance(effect, LeaseEnded):
                lease = effect.lease
                assert effect.outcome in leases_may_end, effect
                assert lease.id in self.leases, f"{lease.id} ended but was not active"
                assert lease.owner == self.made[lease.request.id]
                if effect.outcome is LeaseOutcome.EXPIRED:
                    assert lease.deadline <= self.now
                if effect.outcome is LeaseOutcome.UNCLAIMED:
                    assert not lease.redeemed
                    assert lease.claim_deadline is not None
                    assert lease.claim_deadline <= self.now
                device, _ = self.leases.pop(lease.id)
                self.ended_spans.append((*self.spans.pop(lease.id), self.now))
                self.lease_ends.setdefault(lease.id, []).append(effect.outcome)
                if device in self.devices and self.devices[device].lease == lease.id:
                    self.devices[device].lease = None
            else:
                assert isinstance(effect, (QueueChanged, DeviceChanged))
        for name in list(self.devices):
            if name not in self.s.devices:
                assert self.devices[name].lease is None
                del self.devices[name]
        for key, user in list(self.recency):
            if key not in self.s.keys():
                # The tracker forgets a key (and who was served from it) with its last
                # device and request.
                del self.recency[(key, user)]

    def end_request(self, request_id: str, outcome: RequestOutcome) -> None:
        del self.waiting[request_id]
        self.ended.setdefault(request_id, []).append(outcome)
        assert len(self.ended[request_id]) == 1, f"{request_id} ended twice"

    def check_grant(self, effect: Granted) -> None:
        lease = effect.lease
        request = lease.request
        name = lease.device.name
        device = self.devices[name]
        assert lease.device is self.s.devices[name]
        assert device.grantable, f"{name} granted while {device}"
        assert request.id in self.waiting
        assert lease.owner == self.made[request.id]
        assert lease.id not in self.leases
        # The request the rules pick, by brute force over what the model knows.
        eligible = [r for r in self.waiting.values() if device.can_serve(r)]
        if self.HALF_LIFE > 0:
            self.check_fair_share(request, eligible)
        else:
            self.check_turns(request, eligible)
        assert lease.seconds <= min(
            40.0 if request.key == "k1" else 15.0,
            request.lease_wanted if request.lease_wanted is not None else 20.0,
        )
        self.grants += 1
        self.recency[(request.key, request.user)] = self.grants
        self.end_request(request.id, RequestOutcome.GRANTED)
        self.leases[lease.id] = (name, request.id)
        self.spans[lease.id] = (request.key, request.user, self.now)
        device.lease = lease.id

    def usage_per_share(self, key: str, user: str) -> float:
        """Decayed board-seconds of C{user} on C{key} per share, from the model's own
        record of every lease: each second weighed by 2 ** -(age / half-life)."""
        h = self.HALF_LIFE
        spans = [(k, u, a, b) for k, u, a, b in self.ended_spans]
        spans += [(k, u, a, self.now) for k, u, a in self.spans.values()]
        used = sum(
            h / math.log(2) * (2 ** (-(self.now - b) / h) - 2 ** (-(self.now - a) / h))
            for k, u, a, b in spans
            if (k, u) == (key, user)
        )
        return used / self.SHARES.get(user, 1.0)

    def check_fair_share(self, request: Request, eligible: list[Request]) -> None:
        top = max(r.priority for r in eligible)
        assert request.priority == top, f"granted {request.id} below priority {top}"
        mine = self.usage_per_share(request.key, request.user)
        for other in eligible:
            if other.priority != top or other.user == request.user:
                continue
            theirs = self.usage_per_share(other.key, other.user)
            # A user with strictly less usage per share is never left behind.
            assert not theirs < mine - 1e-6 * max(1.0, mine), (
                f"{request.user} ({mine:.3f}) granted while {other.user} ({theirs:.3f})"
                f" waited with {other.id}"
            )
            if theirs == mine == 0.0:
                # Neither has used the key: ties go by arrival.
                assert request.arrival < other.arrival, f"{other.id} came first"
        for other in eligible:
            if other.user == request.user and other.priority == top and other is not request:
                assert request.arrival < other.arrival, f"{other.id} came first"

    def check_turns(self, request: Request, eligible: list[Request]) -> None:
        def rank(r: Request) -> tuple[int, int, int]:
            return (-r.priority, self.recency.get((r.key, r.user), NEVER), r.arrival)

        best = min(eligible, key=rank)
        assert request.id == best.id, f"granted {request.id}, expected {best.id}"
        # Users take turns: nobody is granted again at a priority while someone else's
        # request there, waiting since before their last grant, has had none since.
        last = self.recency.get((request.key, request.user), NEVER)
        for other in eligible:
            if other.user == request.user or other.priority != request.priority:
                continue
            since = self.grants_before[other.id]
            assert not (
                last >= since and self.recency.get((other.key, other.user), NEVER) < since
            ), f"{request.user} granted twice while {other.id} of {other.user} waited"

    # --- rules --------------------------------------------------------------------------

    @initialize()
    def two_devices(self) -> None:
        self.register("d0", "A", "k1", frozenset({"x"}), True, False)
        self.register("d1", "B", "k1", frozenset(), True, False)

    @rule(
        name=st.sampled_from(NAMES),
        b=st.sampled_from(BOARDS),
        key=st.sampled_from(KEYS),
        tags=HAS,
        healthy=st.sampled_from([True, True, False]),
        takeover=st.sampled_from([False, False, True]),
    )
    def register(
        self, name: str, b: str, key: str, tags: frozenset[str], healthy: bool, takeover: bool
    ) -> None:
        owner = self.board(b)
        old = self.devices.get(name)
        conflict = old is not None and old.online and old.owner != owner and not takeover
        try:
            effects = self.s.register(
                self.now, owner, name, key, f"{name}:1", tags=tags, healthy=healthy,
                takeover=takeover,
            )
        except DeviceConflict:
            assert conflict
            return
        assert not conflict
        if old is None or old.key != key or old.owner != owner or not old.online:
            # A new device (its predecessor's lease, if any, ends device-lost).
            self.devices[name] = ModelDevice(key, owner, tags, healthy)
        else:
            old.tags, old.healthy = tags, healthy
        self.apply(effects, leases_may_end=frozenset({LeaseOutcome.DEVICE_LOST}))

    @rule(name=st.sampled_from(NAMES))
    def unregister(self, name: str) -> None:
        device = self.devices.get(name)
        if device is None or not device.online:
            return
        device.online = False
        effects = self.s.unregister(self.now, device.owner, name)
        self.apply(effects, leases_may_end=frozenset({LeaseOutcome.DEVICE_LOST}))
        assert name not in self.devices

    @rule(
        user=st.sampled_from(USERS),
        key=st.sampled_from(KEYS),
        priority=st.integers(0, 2),
        tags=WANTS,
        lease=st.sampled_from([None, 5.0, 100.0]),
        wait=st.sampled_from([None, None, 3.0, 20.0]),
        wait_for_board=st.sampled_from([True, True, False]),
    )
    def request(
        self,
        user: str,
        key: str,
        priority: int,
        tags: frozenset[str],
        lease: float | None,
        wait: float | None,
        wait_for_board: bool,
    ) -> None:
        owner = self.client(user)
        served = sorted({d.key for d in self.devices.values()})
        if not wait_for_board and key not in served:
            # A key no device serves is refused at once, naming the keys that have one.
            try:
                self.s.request(self.now, owner, user, key, wait_for_board=False)
            except NoSuchKey as e:
                assert repr(key) in str(e) and all(k in str(e) for k in served)
            else:
                raise AssertionError(f"a request for {key}, which no device serves, queued")
            return
        request, effects = self.s.request(
            self.now, owner, user, key, priority=priority, tags=tags, lease=lease, wait=wait,
            wait_for_board=wait_for_board,
        )
        assert request.id not in self.made
        self.made[request.id] = owner
        self.waiting[request.id] = request
        self.grants_before[request.id] = self.grants
        self.apply(effects)

    @precondition(lambda self: self.waiting)
    @rule(i=st.integers(0, 100))
    def cancel(self, i: int) -> None:
        request = self.waiting[sorted(self.waiting)[i % len(self.waiting)]]
        effects = self.s.cancel(self.now, request.id, request.user)
        self.apply(effects, requests_may_end=frozenset({RequestOutcome.CANCELLED}))
        assert self.ended[request.id] == [RequestOutcome.CANCELLED]

    def pick_lease(self, i: int) -> str:
        return sorted(self.leases)[i % len(self.leases)]

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def release(self, i: int) -> None:
        lease = self.s.leases[self.pick_lease(i)]
        effects = self.s.release(self.now, lease.id, lease.user)
        self.apply(effects, leases_may_end=frozenset({LeaseOutcome.RELEASED}))
        assert self.lease_ends[lease.id] == [LeaseOutcome.RELEASED]

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def kick(self, i: int) -> None:
        effects = self.s.kick(self.now, self.pick_lease(i), "root")
        self.apply(effects, leases_may_end=frozenset({LeaseOutcome.KICKED}))

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def redeem(self, i: int) -> None:
        lease = self.s.leases[self.pick_lease(i)]
        owner = self.devices[lease.device.name].owner
        if lease.redeemed:
            try:
                self.s.redeem(self.now, owner, lease.device.name, lease.ticket)
            except TicketRejected:
                return
            raise AssertionError(f"ticket of {lease.id} redeemed twice")
        assert self.s.redeem(self.now, owner, lease.device.name, lease.ticket) is lease

    @rule(name=st.sampled_from(NAMES), draining=st.booleans())
    def drain(self, name: str, draining: bool) -> None:
        device = self.devices.get(name)
        if device is None:
            return
        device.draining = draining
        self.apply(self.s.set_draining(self.now, name, draining))

    @rule(name=st.sampled_from(NAMES), healthy=st.booleans())
    def health(self, name: str, healthy: bool) -> None:
        device = self.devices.get(name)
        if device is None or not device.online:
            return
        device.healthy = healthy
        self.apply(self.s.set_health(self.now, device.owner, name, healthy, "checked"))

    @rule(b=st.sampled_from(BOARDS))
    def board_lost(self, b: str) -> None:
        owner = self.board(b)
        for device in self.devices.values():
            if device.owner == owner:
                device.online = False
        effects = self.s.board_lost(self.now, owner)
        for effect in of(effects, LeaseEnded):
            assert not effect.revoke
        self.apply(effects, leases_may_end=frozenset({LeaseOutcome.DEVICE_LOST}))
        self.board_gen[b] += 1

    @rule(user=st.sampled_from(USERS))
    def client_lost(self, user: str) -> None:
        owner = self.client(user)
        effects = self.s.client_lost(self.now, owner)
        self.apply(
            effects,
            requests_may_end=frozenset({RequestOutcome.WITHDRAWN}),
            leases_may_end=frozenset({LeaseOutcome.CLIENT_LOST}),
        )
        assert self.s.owned_by(owner) == set()
        assert all(r.owner != owner for r in self.waiting.values())
        assert all(self.made[rid] != owner for _, rid in self.leases.values())
        self.client_gen[user] += 1

    @precondition(lambda self: self.HALF_LIFE > 0)
    @rule(user=st.sampled_from(USERS))
    def reset_usage(self, user: str) -> None:
        """An admin resets C{user}'s usage (compass usage --reset): what they used
        before now is forgotten, and their running leases count from now on."""
        self.s.reset_usage(self.now, user)
        self.ended_spans = [span for span in self.ended_spans if span[1] != user]
        for lease_id, (key, who, _start) in list(self.spans.items()):
            if who == user:
                self.spans[lease_id] = (key, who, self.now)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 4.0, 11.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        effects = self.s.advance(self.now)
        self.apply(
            effects,
            requests_may_end=frozenset({RequestOutcome.TIMED_OUT}),
            leases_may_end=frozenset({LeaseOutcome.EXPIRED, LeaseOutcome.UNCLAIMED}),
        )
        deadline = self.s.next_deadline()
        assert deadline is None or deadline > self.now

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def model_agrees_with_the_scheduler(self) -> None:
        assert set(self.s.requests) == set(self.waiting)
        assert set(self.s.leases) == set(self.leases)
        assert set(self.s.devices) == set(self.devices)
        for name, device in self.devices.items():
            assert self.s.devices[name].online == device.online

    @invariant()
    def a_key_is_kept_only_while_it_has_a_device_or_a_waiting_request(self) -> None:
        used = {d.key for d in self.devices.values()} | {r.key for r in self.waiting.values()}
        assert set(self.s.keys()) == used
        assert self.s.served_keys() == sorted({d.key for d in self.devices.values()})

    @invariant()
    def a_device_is_never_leased_twice_and_is_busy_iff_leased(self) -> None:
        holders = [lease.device.name for lease in self.s.leases.values()]
        assert len(holders) == len(set(holders))
        for lease in self.s.leases.values():
            assert self.s.devices[lease.device.name] is lease.device
            assert lease.device.lease is lease
            assert lease.device.online
        for device in self.s.devices.values():
            if device.lease is not None:
                assert device.lease.id in self.s.leases
            if device.online and device.healthy and not device.draining:
                assert (device.state is DeviceState.BUSY) == (device.lease is not None)

    @invariant()
    def a_free_device_never_idles_while_a_request_it_can_serve_waits(self) -> None:
        for name, device in self.s.devices.items():
            if device.state is DeviceState.FREE:
                model = self.devices[name]
                assert not any(model.can_serve(r) for r in self.waiting.values()), name
                assert device.flavor == COMPASSD

    @invariant()
    def every_request_is_waiting_or_ended_exactly_once(self) -> None:
        for request_id in self.made:
            outcomes = self.ended.get(request_id, [])
            assert (request_id in self.waiting) != (len(outcomes) == 1)
            assert len(outcomes) <= 1
        for outcomes in self.lease_ends.values():
            assert len(outcomes) == 1

    @invariant()
    def decayed_usage_is_what_the_leases_held_since_the_last_reset(self) -> None:
        if self.HALF_LIFE <= 0:
            return
        for key in KEYS:
            for user in USERS:
                expected = self.usage_per_share(key, user) * self.SHARES.get(user, 1.0)
                assert math.isclose(self.s.usage(key, user, self.now), expected,
                                    rel_tol=1e-6, abs_tol=1e-6), (key, user)

    @invariant()
    def positions_are_current(self) -> None:
        for key in KEYS:
            positions = self.s.positions(key)
            assert set(positions) == {r.id for r in self.waiting.values() if r.key == key}
            assert sorted(positions.values()) == list(range(len(positions)))
            for request_id, position in positions.items():
                assert self.s.position(request_id) == position


def of(effects: list[Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(stateful_step_count=30)


@settings(max_examples=300, stateful_step_count=40)
class FairShareMachine(SchedulerMachine):
    """The same machine with fair share on: a short half-life so usage decays within a
    run, and unequal shares."""

    HALF_LIFE = 25.0
    SHARES = {"alice": 1.0, "bob": 1.0, "carol": 2.0}


TestFairShare = FairShareMachine.TestCase
