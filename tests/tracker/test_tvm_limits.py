"""What unauthenticated TVM peers may make compass-tracker hold: connections, devices and
waiting requests are capped by address and in total, priorities are bounded, TVM users
never use a compassd user's quota, and a gone TVM server is forgotten in minutes.

In memory against a real TrackerService on a ``task.Clock`` (the peers of test_tvm.py).
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage

from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.protocol.tvm_tracker import TRACKER_MAGIC
from compassd.tracker.records import Policy
from compassd.tracker.tap import Options, tvm_limits
from compassd.tracker.tvm import device_name, tvm_ledger, tvm_user
from compassd.tracker.tvmlimits import TvmLedger, TvmLimits
from tests.tracker.test_tvm import World


def limited(policy: Policy | None = None, **limits: object) -> World:
    world = World(policy)
    tvm_ledger(world.tracker, TvmLimits(**limits))  # type: ignore[arg-type]
    return world


def put(peer: object, port: int, key: str = "npu", custom: str | None = None) -> object:
    return peer.call([3, key, [port, f"{key}:{port}"], custom])  # type: ignore[attr-defined]


def tvm_devices(world: World) -> list[str]:
    return sorted(n for n, d in world.tracker.scheduler.devices.items() if d.flavor == "tvm")


def test_one_address_registers_at_most_its_cap_of_devices_and_others_still_can() -> None:
    world = limited(devices_per_address=3)
    greedy = world.tvm(host="10.0.0.1")
    assert [put(greedy, 9000 + i) for i in range(3)] == [0, 0, 0]
    assert put(greedy, 9003) == -1
    assert put(greedy, 9004, custom="10.9.9.9") == -1  # a made-up address is no way out
    assert put(greedy, 9000) == 0  # offering a device it holds again is fine
    assert not greedy.proto.lost
    other = world.tvm(host="10.0.0.2")
    assert put(other, 9000) == 0
    assert len(tvm_devices(world)) == 4


def test_reconnecting_does_not_reset_the_cap_until_the_offline_devices_are_forgotten() -> None:
    world = limited(devices_per_address=2, forget_offline=300.0)
    first = world.tvm(host="10.0.0.1")
    assert [put(first, 9000), put(first, 9001)] == [0, 0]
    first.close()
    assert all(world.tracker.scheduler.devices[n].state.value == "offline"
               for n in tvm_devices(world))
    again = world.tvm(host="10.0.0.1")
    assert put(again, 9002) == -1
    world.clock.advance(299)
    assert len(tvm_devices(world)) == 2
    world.clock.advance(1)
    assert tvm_devices(world) == []
    assert put(again, 9002) == 0


def test_a_tvm_server_that_comes_back_in_time_is_not_forgotten() -> None:
    world = limited(forget_offline=300.0)
    first = world.tvm()
    put(first, 9090)
    first.close()
    world.clock.advance(100)
    back = world.tvm()
    assert put(back, 9090) == 0
    world.clock.advance(500)
    name = device_name("127.0.0.1", 9090)
    assert world.tracker.scheduler.devices[name].state.value == "free"
    back.close()
    world.clock.advance(300)
    assert name not in world.tracker.scheduler.devices


def test_all_addresses_together_register_at_most_the_total_cap() -> None:
    world = limited(devices=4, devices_per_address=None)
    peers = [world.tvm(host=f"10.0.0.{i}") for i in range(1, 7)]
    answers = [put(peer, 9090) for peer in peers]
    assert answers == [0, 0, 0, 0, -1, -1]
    peers[0].close()
    world.clock.advance(300)  # forgotten: room for one more
    assert put(peers[4], 9090) == 0
    assert put(peers[5], 9090) == -1


def test_a_tvm_put_may_not_take_a_compassd_boards_name() -> None:
    world = World()
    board = world.amp(role="board", user="rack")
    name = device_name("127.0.0.1", 9090)
    board.call(bt.Register, device=name, key="npu", address="10.0.0.9:9200")
    tvm = world.tvm()
    assert put(tvm, 9090) == -1
    assert world.tracker.scheduler.devices[name].flavor == "compassd"
    assert world.tracker.scheduler.devices[name].owner is not None
    board.close()  # offline, but the name still belongs to the board's user
    assert put(world.tvm(), 9090) == -1


def test_one_address_has_at_most_its_cap_of_requests_waiting() -> None:
    world = limited(requests_per_address=2)
    waiting = [world.tvm(host="10.0.0.1") for _ in range(3)]
    assert waiting[0].send([4, "npu", "", 1]) == []
    assert waiting[1].send([4, "npu", "u2", 1]) == []
    reply = waiting[2].call([4, "npu", "u3", 1])
    assert reply[0] == -1 and "already has 2 TVM requests waiting" in reply[1]
    assert world.tvm(host="10.0.0.2").send([4, "npu", "", 1]) == []
    server = world.tvm(host="10.0.0.9")
    put(server, 9090)  # granted to the first: one waits less
    assert waiting[0].proto.new_frames()[0][0] == 0
    assert waiting[2].send([4, "npu", "u3", 1]) == []
    waiting[1].close()  # a withdrawn request frees its place too
    assert world.tvm(host="10.0.0.1").send([4, "npu", "", 1]) == []


def test_several_requests_on_one_connection_count_and_are_all_freed_when_it_closes() -> None:
    world = limited(requests_per_address=3, requests=None)
    peer = world.tvm(host="10.0.0.1")
    for _ in range(3):
        assert peer.send([4, "npu", "", 1]) == []
    assert peer.call([4, "npu", "", 1])[0] == -1
    ledger = tvm_ledger(world.tracker)
    assert ledger.request_count("10.0.0.1") == 3
    peer.close()
    assert ledger.request_count() == 0
    assert world.tracker.scheduler.requests == {}


def test_all_addresses_together_have_at_most_the_total_cap_of_requests_waiting() -> None:
    world = limited(requests=3)
    answers = [world.tvm(host=f"10.0.1.{i}").send([4, "npu", "", 1]) for i in range(5)]
    assert answers[:3] == [[], [], []]
    assert [a[0][0] for a in answers[3:]] == [-1, -1]
    assert "3 TVM requests waiting, the most it allows" in answers[4][0][1]


@pytest.mark.parametrize("priority", [1_000_001, -1_000_001, 10**4000])
def test_a_priority_out_of_range_is_refused_with_a_sentence(priority: int) -> None:
    world = World()
    peer = world.tvm()
    reply = peer.call([4, "npu", "", priority])
    assert reply[0] == -1 and "out of range (-1000000 to 1000000)" in reply[1]
    assert len(reply[1]) < 200
    assert world.tracker.scheduler.requests == {}
    assert not peer.proto.lost


def test_the_priority_bounds_themselves_are_accepted() -> None:
    world = World()
    assert world.tvm().send([4, "npu", "", 1_000_000]) == []
    assert world.tvm().send([4, "npu", "", -1_000_000]) == []
    assert sorted(r.priority for r in world.tracker.scheduler.requests.values()) == [
        -1_000_000, 1_000_000]


def test_a_tvm_request_naming_a_compassd_user_uses_its_own_quota_not_theirs() -> None:
    world = World(Policy(max_queued_per_user=1))
    tvm = world.tvm()
    assert tvm.send([4, "npu", "bob", 1]) == []
    bob = world.amp(user="bob")
    bob.call(ct.Request, key="npu", wait_for_board=True)  # not refused: not bob's request
    users = sorted(r.user for r in world.tracker.scheduler.requests.values())
    assert users == ["bob", "tvm:bob"]
    assert world.tvm().call([4, "npu", "bob", 1])[0] == -1  # tvm:bob's own quota


def test_tvm_user_names() -> None:
    assert tvm_user("", "10.0.0.1") == "tvm@10.0.0.1"
    assert tvm_user("carol", "10.0.0.1") == "tvm:carol"
    assert tvm_user("a b/c", "::1") == "tvm:a_b_c"
    assert len(tvm_user("x" * 256, "::1")) == 64


def test_one_address_holds_at_most_its_cap_of_tvm_connections() -> None:
    world = limited(connections_per_address=2, connections=3)
    kept = [world.tvm(host="10.0.0.1") for _ in range(2)]
    refused = world.tvm(host="10.0.0.1", handshake=False)
    refused.raw(TRACKER_MAGIC)
    assert refused.proto.received == b"" and refused.proto.lost
    assert all(peer.call([1]) == 0 for peer in kept)
    assert world.tvm(host="10.0.0.2").call([1]) == 0
    full = world.tvm(host="10.0.0.3", handshake=False)  # the total cap
    full.raw(TRACKER_MAGIC)
    assert full.proto.lost
    kept[0].close()
    assert world.tvm(host="10.0.0.1").call([1]) == 0
    assert tvm_ledger(world.tracker).connection_count() == 3


def test_the_ledger_counts_a_device_once_per_name_and_moves_it_with_its_address() -> None:
    ledger = TvmLedger(TvmLimits(devices_per_address=1))
    held = {("d1", "a")}

    def still(name: str, host: str) -> bool:
        return (name, host) in held

    assert ledger.device_refusal("a", "d1", still) is None
    ledger.device_added("a", "d1")
    ledger.device_added("a", "d1")
    assert ledger.device_count("a") == 1 and ledger.device_count() == 1
    assert ledger.device_refusal("a", "d1", still) is None  # its own
    assert "already registered 1 TVM devices" in str(ledger.device_refusal("a", "d2", still))
    ledger.device_added("b", "d1")  # another address took the name over
    assert ledger.device_count("a") == 0 and ledger.device_count("b") == 1
    held.clear()
    assert ledger.device_refusal("b", "d3", still) is None  # d1 is no longer held


def test_tvm_options_become_the_limits() -> None:
    options = Options()
    options.parseOptions(["--tvm"])
    assert tvm_limits(options) == TvmLimits()
    options = Options()
    options.parseOptions(["--tvm", "--tvm-max-devices-per-address", "5",
                          "--tvm-max-devices", "0", "--tvm-forget-offline", "60",
                          "--tvm-max-requests-per-address", "7",
                          "--tvm-max-connections", "9"])
    limits = tvm_limits(options)
    assert (limits.devices_per_address, limits.devices, limits.forget_offline,
            limits.requests_per_address, limits.connections) == (5, None, 60.0, 7, 9)
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--tvm-max-devices", "-3"])


# --- the ledger against what the tracker really holds, under random traffic -------------

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
OPS = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(HOSTS)),
    st.tuples(st.just("put"), st.integers(0, 7), st.integers(9000, 9006)),
    st.tuples(st.just("request"), st.integers(0, 7), st.sampled_from(["npu", "cpu"]),
              st.integers(-3, 3) | st.sampled_from([10**7, -(10**7)])),
    st.tuples(st.just("close"), st.integers(0, 7)),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 100.0, 300.0])),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_the_ledger_always_matches_what_tvm_peers_hold_and_the_caps_hold(ops: list) -> None:
    limits = TvmLimits(connections_per_address=3, connections=6, devices_per_address=2,
                       devices=4, requests_per_address=2, requests=4, forget_offline=300.0)
    world = limited(**attrs.asdict(limits))
    peers: list = []
    for op in ops:
        if op[0] == "connect":
            peer = world.tvm(host=op[1], handshake=False)
            peer.raw(TRACKER_MAGIC)  # echoed, or closed past the caps
            peers.append((op[1], peer))
        elif op[0] == "put" and peers:
            _, peer = peers[op[1] % len(peers)]
            if not peer.proto.lost:
                peer.send([3, "npu", [op[2], f"npu:{op[2]}"], None])
        elif op[0] == "request" and peers:
            _, peer = peers[op[1] % len(peers)]
            if not peer.proto.lost:
                peer.send([4, op[2], "", op[3]])
        elif op[0] == "close" and peers:
            _, peer = peers[op[1] % len(peers)]
            peer.close()
        elif op[0] == "advance":
            world.clock.advance(op[1])
            world.flush()
        ledger = tvm_ledger(world.tracker)
        scheduler = world.tracker.scheduler
        live = [(h, p) for h, p in peers if not p.proto.lost]
        assert ledger.connection_count() == len(live) <= 6
        for host in HOSTS:
            assert ledger.connection_count(host) == sum(1 for h, _ in live if h == host) <= 3
            waiting = [r for r in scheduler.requests.values()
                       if r.flavor == "tvm" and r.owner.peer_host == host]
            assert ledger.request_count(host) == len(waiting) <= 2
            held = [d for d in scheduler.devices.values() if d.flavor == "tvm"
                    and d.owner.peer_host == host]
            assert len(held) <= 2
        assert ledger.request_count() <= 4
        assert len([d for d in scheduler.devices.values() if d.flavor == "tvm"]) <= 4
        assert all(limits.min_priority <= r.priority <= limits.max_priority
                   for r in scheduler.requests.values())
