"""Tickets against the real tracker service: one that is replayed, forged, or presented
by another board is refused, and the refusal says why."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.python.failure import Failure

from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.protocol.errors import NoSuchDevice, NotAuthorized, TicketRejected
from tests.tracker.test_service import Harness


def granted(h: Harness, key: str = "npu") -> dict:
    client = h.connect(user="ann")
    client.ok(ct.Request, key=key)
    return client.peer.take("granted")[0][1]


def test_a_ticket_is_good_once_and_a_replay_is_refused() -> None:
    h = Harness()
    board = h.board("npu-1")
    grant = granted(h)
    assert board.ok(bt.Redeem, device="npu-1", ticket=grant["ticket"])["user"] == "ann"
    why = board.refused(TicketRejected, bt.Redeem, device="npu-1", ticket=grant["ticket"])
    assert "already used" in why


def test_a_ticket_presented_by_another_board_is_no_such_device_and_names_no_device(
) -> None:
    h = Harness()
    board = h.board("npu-1", key="npu")
    other = h.board("cpu-1", key="cpu", user="rack2")
    grant = granted(h, "npu")
    why = other.refused(NoSuchDevice, bt.Redeem, device="npu-1", ticket=grant["ticket"])
    assert "not registered on this connection" in why
    why = other.refused(NoSuchDevice, bt.Redeem, device="cpu-1", ticket=grant["ticket"])
    assert "not granted for device cpu-1" in why and "npu-1" not in why
    # the wrong board did not use the ticket up: the right one still can
    assert board.ok(bt.Redeem, device="npu-1", ticket=grant["ticket"])["user"] == "ann"


def test_a_client_cannot_redeem_a_ticket_and_so_use_it_up() -> None:
    h = Harness()
    board = h.board("npu-1")
    grant = granted(h)
    thief = h.connect(user="mallory")
    result = thief.call(bt.Redeem, device="npu-1", ticket=grant["ticket"])
    assert isinstance(result, Failure)
    assert result.check(NotAuthorized, NoSuchDevice)
    assert board.ok(bt.Redeem, device="npu-1", ticket=grant["ticket"])["user"] == "ann"


def test_forged_tickets_are_refused_and_the_real_one_still_works() -> None:
    h = Harness()
    board = h.board("npu-1")
    grant = granted(h)
    tried = 0

    @given(st.text(min_size=1, max_size=200).filter(lambda t: t != grant["ticket"])
           | st.just(grant["ticket"][:-1] + ("A" if grant["ticket"][-1] != "A" else "B")))
    def forged(ticket: str) -> None:
        nonlocal tried
        tried += 1
        board.refused(TicketRejected, bt.Redeem, device="npu-1", ticket=ticket)

    forged()
    print(f"\ntried {tried} forged tickets")
    assert board.ok(bt.Redeem, device="npu-1", ticket=grant["ticket"])["lease"] == grant["lease"]


def test_a_proxy_checking_tickets_uses_none_up_and_forged_ones_are_refused() -> None:
    """check-ticket (what compass-proxy asks before it has a board connect back) gives
    the same verdict as redeem without using the ticket up; only the device's own board
    link may ask."""
    h = Harness()
    board = h.board("npu-1")
    grant = granted(h)
    tried = 0

    @given(st.text(min_size=1, max_size=200).filter(lambda t: t != grant["ticket"])
           | st.just(grant["ticket"][:-1] + ("A" if grant["ticket"][-1] != "A" else "B")))
    def forged(ticket: str) -> None:
        nonlocal tried
        tried += 1
        board.refused(TicketRejected, bt.CheckTicket, device="npu-1", ticket=ticket)
        assert board.ok(bt.CheckTicket, device="npu-1", ticket=grant["ticket"])["user"] \
            == "ann"

    forged()
    assert tried >= 10
    thief = h.connect(user="mallory")
    result = thief.call(bt.CheckTicket, device="npu-1", ticket=grant["ticket"])
    assert isinstance(result, Failure) and result.check(NotAuthorized, NoSuchDevice)
    assert board.ok(bt.Redeem, device="npu-1", ticket=grant["ticket"])["lease"] == grant["lease"]
    why = board.refused(TicketRejected, bt.CheckTicket, device="npu-1", ticket=grant["ticket"])
    assert "already used" in why
