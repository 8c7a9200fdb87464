"""A lease is true on both ends, under random sequences of the faults of issue 12.

The test keeps a model of compass-servers that report their sessions (one device each,
as a real one) and talks to the scheduler the way the shell does, through one ordered
connection per board: what a board says (a heartbeat with the session it serves, "my
session ended") and what the tracker says (end this lease) wait in queues that a rule
delivers one message at a time, so every message can arrive late. Boards stall and come
back, are killed and restarted; clients open, close and release; an admin kicks; time
passes; the tracker itself is killed and a new one starts with none of its state.

After every step: a grant never goes to a board that serves a session (no grant fails
with BoardBusy), the tracker never shows a device free while its board serves a session,
and ids never repeat across tracker starts. After a round of heartbeats with every
message delivered, the two views agree: the board serves exactly the lease the tracker
has active on that device and whose ticket was used.
"""

from __future__ import annotations

from typing import Any

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

from compassd.protocol.errors import TicketRejected
from compassd.tracker.reconcile import SessionReport, lease_epoch
from compassd.tracker.records import (
    DeviceState,
    Effect,
    EndOnBoard,
    Granted,
    LeaseEnded,
    Policy,
)
from compassd.tracker.scheduler import Scheduler

KEY = "npu"
BOARDS = ["b0", "b1"]
USERS = ["alice", "bob", "carol"]


@attrs.define
class Session:
    lease: str
    holder: str
    deadline: float


@attrs.define
class Board:
    """A compass-server as the tracker sees it through its link."""

    name: str
    generation: int = 0
    connected: bool = False
    session: Session | None = None
    to_tracker: list[tuple[str, Any]] = attrs.Factory(list)
    """("beat", SessionReport | None) and ("ended", lease id), in the order sent."""
    to_board: list[str] = attrs.Factory(list)
    """Leases the tracker told this board to end, in the order sent."""

    @property
    def owner(self) -> str:
        return f"{self.name}#{self.generation}"

    def report(self, now: float) -> SessionReport | None:
        s = self.session
        return None if s is None else SessionReport(s.lease, s.holder, max(0.0, s.deadline - now))

    def hang_up(self) -> None:
        self.connected = False
        self.generation += 1
        self.to_tracker.clear()
        self.to_board.clear()


@attrs.define
class Ticket:
    lease: str
    ticket: str
    device: str
    user: str
    tracker: int
    """Which tracker start issued it."""


POLICY = Policy(default_lease=20.0, max_lease=40.0, claim_timeout=10.0,
                forget_offline=200.0, fair_share_half_life=0.0)


class ReconcileMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.s = Scheduler(policy=POLICY)
        self.starts = 0
        self.epochs = [self.s.epoch]
        self.boards = {name: Board(name) for name in BOARDS}
        self.tickets: list[Ticket] = []
        self.granted: set[str] = set()
        """Every lease id any tracker start ever granted."""
        self.clients = {user: 0 for user in USERS}

    def client(self, user: str) -> str:
        return f"{user}#{self.starts}.{self.clients[user]}"

    # --- what the shell does with the core's effects --------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Granted):
                lease = effect.lease
                board = self.boards[lease.device.name]
                assert board.connected, f"{lease.id} granted on an offline board"
                assert board.session is None, (
                    f"{lease.id} granted on {board.name}, which serves {board.session}:"
                    " its client would get BoardBusy")
                assert lease.id not in self.granted, f"{lease.id} granted twice"
                assert lease_epoch(lease.id) == self.s.epoch
                self.granted.add(lease.id)
                self.tickets.append(Ticket(lease.id, lease.ticket, board.name, lease.user,
                                           self.starts))
            elif isinstance(effect, LeaseEnded):
                if effect.revoke:
                    board = self.boards[effect.lease.device.name]
                    assert board.connected, f"a revoke of {effect.lease.id} to an offline board"
                    board.to_board.append(effect.lease.id)
            elif isinstance(effect, EndOnBoard):
                board = self.boards[effect.device.name]
                assert board.connected
                board.to_board.append(effect.lease)

    # --- boards ----------------------------------------------------------------------------

    @initialize()
    def both_boards_register(self) -> None:
        for name in BOARDS:
            self.board_connects(name)

    @rule(name=st.sampled_from(BOARDS))
    def board_connects(self, name: str) -> None:
        """A board (re)registers, saying what it serves."""
        board = self.boards[name]
        if board.connected:
            return
        board.connected = True
        self.apply(self.s.register(self.now, board.owner, name, KEY, f"{name}:1",
                                   reports=True, serving=board.report(self.now)))

    @rule(name=st.sampled_from(BOARDS))
    def board_stalls(self, name: str) -> None:
        """The board stops answering (SIGSTOP, a cut cable) past the heartbeat timeout:
        the tracker drops it; whatever was in flight is lost; its session goes on."""
        board = self.boards[name]
        if not board.connected:
            return
        owner = board.owner
        board.hang_up()
        effects = self.s.board_lost(self.now, owner)
        assert not [e for e in effects if isinstance(e, LeaseEnded)], (
            "a stalled reporting board's lease is suspended, not ended")
        self.apply(effects)

    @rule(name=st.sampled_from(BOARDS))
    def board_restarts(self, name: str) -> None:
        """kill -9 of the server: its session and executor are gone with it."""
        board = self.boards[name]
        if board.connected:
            owner = board.owner
            board.hang_up()
            self.apply(self.s.board_lost(self.now, owner))
        board.session = None

    @rule(name=st.sampled_from(BOARDS))
    def heartbeat(self, name: str) -> None:
        board = self.boards[name]
        if board.connected:
            board.to_tracker.append(("beat", board.report(self.now)))

    @rule(name=st.sampled_from(BOARDS))
    def board_ends_its_session(self, name: str) -> None:
        """The holder closes the session, or its client goes away, or the executor
        dies, or the board's own deadline passes: the board ends it and says so."""
        board = self.boards[name]
        if board.session is None:
            return
        ended, board.session = board.session.lease, None
        if board.connected:
            board.to_tracker.append(("ended", ended))

    @rule()
    def boards_end_sessions_at_their_deadline(self) -> None:
        for board in self.boards.values():
            if board.session is not None and board.session.deadline <= self.now:
                self.board_ends_its_session(board.name)

    @rule(name=st.sampled_from(BOARDS))
    def deliver_to_tracker(self, name: str) -> None:
        board = self.boards[name]
        if board.to_tracker:
            self.tracker_hears(board, *board.to_tracker.pop(0))

    def tracker_hears(self, board: Board, what: str, value: Any) -> None:
        if what == "beat":
            self.apply(self.s.reconcile(self.now, board.owner, board.name, value))
        else:
            self.apply(self.s.session_ended(self.now, board.owner, board.name, value))

    @rule(name=st.sampled_from(BOARDS))
    def deliver_to_board(self, name: str) -> None:
        board = self.boards[name]
        if board.to_board:
            self.board_hears(board, board.to_board.pop(0))

    def board_hears(self, board: Board, lease: str) -> None:
        """A revoke: the board ends that session at once and confirms (a board that
        serves no such session confirms too)."""
        if board.session is not None and board.session.lease == lease:
            board.session = None
        board.to_tracker.append(("ended", lease))

    # --- clients ---------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), lease=st.sampled_from([None, 5.0, 30.0]),
          opens=st.booleans())
    def request(self, user: str, lease: float | None, opens: bool) -> None:
        """A request; if it is granted at once, its client may open the session now."""
        _, effects = self.s.request(self.now, self.client(user), user, KEY, lease=lease)
        self.apply(list(effects))
        if opens and self.tickets and self.tickets[-1].user == user \
                and self.tickets[-1].tracker == self.starts:
            self.present_ticket(len(self.tickets) - 1)

    @precondition(lambda self: self.tickets)
    @rule(i=st.integers(0, 50))
    def present_ticket(self, i: int) -> None:
        """A client opens its session: the board checks the ticket with the tracker (a
        call on the board's connection, so after everything the board sent before)."""
        ticket = self.tickets.pop(i % len(self.tickets))
        board = self.boards[ticket.device]
        if not board.connected:
            return  # no session opens while the tracker cannot be asked
        while board.to_tracker:
            self.tracker_hears(board, *board.to_tracker.pop(0))
        try:
            lease = self.s.redeem(self.now, board.owner, board.name, ticket.ticket)
        except TicketRejected:
            return
        assert board.session is None, (
            f"{ticket.lease}'s ticket opened a session on {board.name}, which serves"
            f" {board.session}: BoardBusy")
        board.session = Session(lease.id, lease.user, lease.deadline)

    @precondition(lambda self: self.s.leases)
    @rule(i=st.integers(0, 50), kick=st.booleans())
    def release_or_kick(self, i: int, kick: bool) -> None:
        lease = self.s.leases[sorted(self.s.leases)[i % len(self.s.leases)]]
        if kick:
            self.apply(self.s.kick(self.now, lease.id, "root", "maintenance"))
        else:
            self.apply(self.s.release(self.now, lease.id, lease.user))

    @rule(user=st.sampled_from(USERS))
    def client_lost(self, user: str) -> None:
        self.apply(self.s.client_lost(self.now, self.client(user)))
        self.clients[user] += 1

    # --- the tracker and time ----------------------------------------------------------

    @precondition(lambda self: any(b.session for b in self.boards.values()))
    @rule()
    def tracker_restarts(self) -> None:
        """kill -9 and a new start: no state, a new epoch; every board's connection goes
        (and what was in flight on it), every client's too."""
        self.s = Scheduler(policy=POLICY)
        assert self.s.epoch not in self.epochs
        self.epochs.append(self.s.epoch)
        self.starts += 1
        for board in self.boards.values():
            if board.connected:
                board.hang_up()

    @rule(dt=st.sampled_from([1.0, 3.0, 8.0, 25.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.apply(self.s.advance(self.now))

    @rule()
    def settle(self) -> None:
        """Every board heartbeats and every message is delivered, until nothing is in
        flight: then the tracker and the boards agree."""
        for board in self.boards.values():
            self.heartbeat(board.name)
        for _ in range(20):
            moved = False
            for board in self.boards.values():
                while board.to_board:
                    self.board_hears(board, board.to_board.pop(0))
                    moved = True
                while board.to_tracker:
                    self.tracker_hears(board, *board.to_tracker.pop(0))
                    moved = True
            if not moved:
                break
        else:
            raise AssertionError("messages still flew after 20 rounds")
        for board in self.boards.values():
            if not board.connected:
                continue
            device = self.s.devices[board.name]
            assert device.ending is None, f"{board.name} still waits for {device.ending}"
            lease = device.lease
            if board.session is not None:
                assert lease is not None and lease.id == board.session.lease, (
                    f"{board.name} serves {board.session}; the tracker has {lease}")
                assert lease.redeemed
            else:
                assert lease is None or not lease.redeemed, (
                    f"the tracker has {lease.id} on {board.name}, which serves nothing")

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def a_device_is_never_free_while_its_board_serves_a_session(self) -> None:
        for board in self.boards.values():
            device = self.s.devices.get(board.name)
            if device is None:
                assert not board.connected
                continue
            if not board.connected:
                assert device.state is DeviceState.OFFLINE
            elif board.session is not None:
                assert device.state is not DeviceState.FREE, (
                    f"{board.name} shown free while it serves {board.session}")

    @invariant()
    def an_active_lease_is_on_one_device_of_this_start(self) -> None:
        holders = [lease.device.name for lease in self.s.leases.values()]
        assert len(holders) == len(set(holders))
        for lease in self.s.leases.values():
            assert lease.device.lease is lease
            if not lease.adopted:
                assert lease_epoch(lease.id) == self.s.epoch


TestReconcile = ReconcileMachine.TestCase
TestReconcile.settings = settings(max_examples=150, stateful_step_count=50,
                                  deadline=None)
