"""The proxy's functional core: which board serves a device, and channels to boards."""

from __future__ import annotations

import itertools

import pytest

from compassd.protocol.errors import BadRequest, LimitExceeded, NoSuchDevice
from compassd.proxy import Pairing


def _pairing(max_pending: int = 64) -> Pairing[str, str]:
    counter = itertools.count()
    return Pairing(max_pending=max_pending, new_channel=lambda: f"ch{next(counter)}")


def test_a_channel_goes_to_the_board_that_registered_the_device() -> None:
    pairing = _pairing()
    pairing.add_device("npu-1", "board A")
    pairing.add_device("npu-2", "board B")
    channel = pairing.open_channel("npu-2", "client", now=0.0, timeout=10.0)
    assert channel.board == "board B" and channel.deadline == 10.0
    assert pairing.attach(channel.ident).waiter == "client"


def test_an_unknown_or_missing_device_is_refused_with_a_sentence() -> None:
    pairing = _pairing()
    with pytest.raises(NoSuchDevice, match="No board named ghost is connected"):
        pairing.open_channel("ghost", "client", 0.0, 10.0)
    with pytest.raises(BadRequest, match="must name the device"):
        pairing.open_channel(None, "client", 0.0, 10.0)


def test_a_channel_attaches_once_and_unknown_channels_are_refused() -> None:
    pairing = _pairing()
    pairing.add_device("npu-1", "board")
    channel = pairing.open_channel("npu-1", "client", 0.0, 10.0)
    pairing.attach(channel.ident)
    with pytest.raises(BadRequest, match="No client is waiting on that channel"):
        pairing.attach(channel.ident)
    with pytest.raises(BadRequest):
        pairing.attach("forged")


def test_channels_expire_at_their_deadline_only() -> None:
    pairing = _pairing()
    pairing.add_device("npu-1", "board")
    first = pairing.open_channel("npu-1", "c1", 0.0, 10.0)
    second = pairing.open_channel("npu-1", "c2", 5.0, 10.0)
    assert pairing.expired(9.9) == []
    assert pairing.expired(10.0) == [first]
    assert pairing.expired(15.0) == [second]
    assert pairing.pending() == 0


def test_a_board_leaving_forgets_its_devices_and_returns_its_waiting_clients() -> None:
    pairing = _pairing()
    pairing.add_device("npu-1", "board A")
    pairing.add_device("npu-2", "board B")
    waiting = pairing.open_channel("npu-1", "c1", 0.0, 10.0)
    other = pairing.open_channel("npu-2", "c2", 0.0, 10.0)
    assert pairing.board_gone("board A") == [waiting]
    assert pairing.devices() == ["npu-2"]
    with pytest.raises(NoSuchDevice):
        pairing.open_channel("npu-1", "c3", 0.0, 10.0)
    assert pairing.attach(other.ident).waiter == "c2"


def test_a_device_taken_over_by_another_board_is_not_removed_by_the_old_one() -> None:
    pairing = _pairing()
    pairing.add_device("npu-1", "old")
    pairing.add_device("npu-1", "new")
    pairing.remove_device("npu-1", "old")
    assert pairing.board_for("npu-1") == "new"


def test_too_many_clients_waiting_for_one_board_is_a_clear_limit() -> None:
    pairing = _pairing(max_pending=2)
    pairing.add_device("npu-1", "board")
    pairing.open_channel("npu-1", "c1", 0.0, 10.0)
    pairing.open_channel("npu-1", "c2", 0.0, 10.0)
    with pytest.raises(LimitExceeded, match="2 clients are already waiting for board npu-1"):
        pairing.open_channel("npu-1", "c3", 0.0, 10.0)
