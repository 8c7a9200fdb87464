"""A board token's keys= limits the pools it may register in, and a device name belongs to
the token (user) that first registered it: another board token cannot take it over."""

from __future__ import annotations

from compassd.protocol import DeviceConflict, NotAuthorized
from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.tracker.access import Access, Identity, hash_token
from tests.tracker.test_service import Harness

TOKENS = {
    hash_token("ann-token"): Identity("ann", frozenset({"client"})),
    hash_token("rack-token"): Identity("rack", frozenset({"board"}), ("npu-*",)),
    hash_token("lab-token"): Identity("lab", frozenset({"board"})),
}


def harness() -> Harness:
    h = Harness(access=Access(TOKENS))
    h.viewer_token = "ann-token"
    return h


def test_a_board_token_registers_only_in_the_pools_its_keys_name() -> None:
    h = harness()
    rack = h.connect("board", token="rack-token")
    rack.ok(bt.Register, device="b1", key="npu-x2", address="b1.lab:9191")
    why = rack.refused(NotAuthorized, bt.Register, device="b2", key="gpu",
                       address="b2.lab:9191")
    assert "only in the pools npu-*" in why and "'gpu'" in why
    assert set(h.devices()) == {"b1"}


def test_another_token_cannot_take_over_a_device_name_and_the_board_keeps_serving() -> None:
    h = harness()
    rack = h.connect("board", token="rack-token")
    rack.ok(bt.Register, device="b1", key="npu-x2", address="b1.lab:9191")
    lab = h.connect("board", token="lab-token")
    why = lab.refused(DeviceConflict, bt.Register, device="b1", key="npu-x2",
                      address="evil:9191")
    assert "belongs to rack" in why
    assert rack.open
    assert h.devices()["b1"]["address"] == "b1.lab:9191"
    # a client is granted the real board, not the impostor
    ann = h.connect(token="ann-token")
    ann.ok(ct.Request, key="npu-x2")
    assert ann.peer.take("granted")[0][1]["address"] == "b1.lab:9191"


def test_the_owning_token_may_register_its_name_again_after_a_restart() -> None:
    h = harness()
    rack = h.connect("board", token="rack-token")
    rack.ok(bt.Register, device="b1", key="npu-x2", address="b1.lab:9191")
    rack.disconnect()
    again = h.connect("board", token="rack-token")
    again.ok(bt.Register, device="b1", key="npu-x2", address="b1.lab:9192")
    lab = h.connect("board", token="lab-token")
    lab.refused(DeviceConflict, bt.Register, device="b1", key="npu-x2", address="x:1")
    assert h.devices()["b1"]["address"] == "b1.lab:9192"
