"""The tracker's Twisted shell: TrackerService and TrackerConnection over in-memory
connections (L{twisted.test.iosim}) with a L{Clock}; no sockets, no real time."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd.protocol import (
    PROTOCOL_VERSION,
    BadRequest,
    DeviceConflict,
    Hello,
    HelloRequired,
    LimitExceeded,
    NoSuchDevice,
    NoSuchKey,
    NoSuchLease,
    NoSuchRequest,
    NotAuthorized,
    NotYourLease,
    TicketRejected,
    UnsupportedVersion,
)
from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.protocol.peer import CompassPeer
from compassd.tracker.access import Access, Identity, hash_token
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.service import TrackerConnection, TrackerService

# --- harness --------------------------------------------------------------------------


class Peer(CompassPeer):
    """The far end of one tracker connection: it records every notice it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.notices: list[tuple[str, dict[str, Any]]] = []

    def _record(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.notices.append((name, arguments))
        return {}

    @ct.Position.responder
    def position(self, **kw: Any) -> dict[str, Any]:
        return self._record("position", kw)

    @ct.Granted.responder
    def granted(self, **kw: Any) -> dict[str, Any]:
        return self._record("granted", kw)

    @ct.RequestEnded.responder
    def request_ended(self, **kw: Any) -> dict[str, Any]:
        return self._record("request-ended", kw)

    @ct.LeaseEnded.responder
    def lease_ended(self, **kw: Any) -> dict[str, Any]:
        return self._record("lease-ended", kw)

    @bt.Revoke.responder
    def revoke(self, **kw: Any) -> dict[str, Any]:
        return self._record("revoke", kw)

    def take(self, name: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The notices so far (of one kind, if named), forgetting them."""
        got = [n for n in self.notices if name is None or n[0] == name]
        self.notices = [n for n in self.notices if name is not None and n[0] != name]
        return got


class ReactorTransport(iosim.FakeTransport):
    """Like a reactor's TCP transport: an exception out of dataReceived closes the
    connection instead of reaching the caller."""

    def bufferReceived(self, buf: Any) -> None:
        try:
            super().bufferReceived(buf)
        except Exception as e:
            self.disconnectReason = e
            self.loseConnection()


class Conn:
    """One connection to the tracker under test, from the far end's point of view."""

    def __init__(self, harness: Harness, peer: Peer, server: TrackerConnection,
                 pump: iosim.IOPump) -> None:
        self.harness, self.peer, self.server, self.pump = harness, peer, server, pump

    def call(self, command: type[amp.Command], **kw: Any) -> Any:
        """Call C{command}; pump every connection; return the answer or the Failure."""
        results: list[Any] = []
        self.peer.callRemote(command, **kw).addBoth(results.append)
        self.harness.flush()
        assert len(results) == 1, f"{command.__name__} was not answered"
        return results[0]

    def ok(self, command: type[amp.Command], **kw: Any) -> Any:
        result = self.call(command, **kw)
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def refused(self, error: type[Exception], command: type[amp.Command], **kw: Any) -> str:
        result = self.call(command, **kw)
        assert isinstance(result, Failure), f"{command.__name__} succeeded: {result!r}"
        assert result.type is error, result
        return str(result.value)

    def write(self, data: bytes) -> None:
        self.peer.transport.write(data)
        self.harness.flush()

    def disconnect(self) -> None:
        self.peer.transport.loseConnection()
        self.harness.flush()

    @property
    def open(self) -> bool:
        return self.server.alive and self.peer.alive


class Harness:
    viewer_token: str | None = None
    """The token L{devices} looks with, on a tracker that needs one."""

    def __init__(self, **kw: Any) -> None:
        self.clock = Clock()
        self.tracker = TrackerService(reactor=self.clock, **kw)
        self.tracker.startService()
        self.conns: list[Conn] = []

    def connect(self, role: str | None = "client", user: str = "ann",
                token: str | None = None) -> Conn:
        server = TrackerConnection(self.tracker)
        peer = Peer()
        pump = iosim.connect(
            server, ReactorTransport(server, isServer=True),
            peer, iosim.FakeTransport(peer, isServer=False),
        )
        conn = Conn(self, peer, server, pump)
        self.conns.append(conn)
        if role is not None:
            kw: dict[str, Any] = {"user": user} if token is None else {"token": token}
            answer = conn.ok(Hello, versions=[PROTOCOL_VERSION], role=role, **kw)
            assert answer["version"] == PROTOCOL_VERSION
            peer.greeted = True
        return conn

    def board(self, *devices: str, key: str = "npu", user: str = "rack",
              token: str | None = None) -> Conn:
        conn = self.connect("board", user=user, token=token)
        for name in devices:
            conn.ok(bt.Register, device=name, key=key, address=f"{name}.lab:9191",
                    info=["backend=aipu", "cores=3"], tags=["x2"])
        return conn

    def flush(self) -> None:
        """Pump every connection, and run what is due now (the end of a reactor turn:
        the journal's write of a store-backed tracker, whose answers wait for it)."""
        for _ in range(20):
            pumped = any([c.pump.flush() for c in self.conns])
            now = self.clock.seconds()
            due = any(call.getTime() <= now for call in self.clock.getDelayedCalls())
            if due:
                self.clock.advance(0)
            if not pumped and not due:
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def devices(self) -> dict[str, dict[str, Any]]:
        viewer = self.connect(user="viewer", token=self.viewer_token)
        rows = viewer.ok(ct.ListDevices)["devices"]
        viewer.disconnect()
        return {row["name"]: row for row in rows}


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def logged() -> Any:
    """Formatted tracker log lines, as they are emitted."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "compass.tracker":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def _one(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert len(found) == 1, f"{text!r} logged {len(found)} times in {lines}"
    return found[0]


# --- boards ---------------------------------------------------------------------------


def test_a_board_registers_and_is_told_how_often_to_heartbeat(h: Harness) -> None:
    board = h.connect("board", user="rack")
    answer = board.ok(bt.Register, device="npu-1", key="npu", address="b1:9191")
    assert answer["heartbeat"] == pytest.approx(h.tracker.heartbeat_timeout / 3)
    assert h.devices()["npu-1"]["state"] == "free"


def test_a_board_that_heartbeats_stays_online(h: Harness) -> None:
    board = h.board("npu-1")
    for _ in range(10):  # 50 s, more than three timeouts
        h.advance(5.0)
        board.ok(bt.Heartbeat)
    assert board.open
    assert h.devices()["npu-1"]["state"] == "free"


def test_any_command_from_a_board_counts_as_a_sign_of_life(h: Harness) -> None:
    board = h.board("npu-1")
    for _ in range(5):
        h.advance(10.0)
        board.ok(bt.Health, device="npu-1", healthy=True)
    assert board.open


def test_a_silent_board_goes_offline_within_the_heartbeat_timeout(
    h: Harness, logged: list[str]
) -> None:
    board = h.board("npu-1")
    client = h.connect(user="ann")
    client.ok(ct.Request, key="npu")
    (_, granted), = client.peer.take("granted")
    h.advance(10.0)
    board.ok(bt.Heartbeat)  # the last sign of life, at t=10
    h.advance(h.tracker.heartbeat_timeout - 0.01)
    assert board.open
    h.advance(0.01)  # the timeout after the last message: dropped now
    assert not board.open
    row = h.devices()["npu-1"]
    assert row["state"] == "offline" and row["holder"] is None
    assert client.peer.take("lease-ended") == [
        ("lease-ended", {"lease": granted["lease"], "reason": "device-lost",
                         "message": "Device npu-1 went offline (its server stopped answering);"
                                    " request another device."}),
    ]
    _one(logged, "sent nothing for 15 s; dropping it")
    _one(logged, "device npu-1 (npu) is offline: its server went away")


def test_a_board_reconnecting_takes_its_device_back_and_the_old_connection_is_dropped(
    h: Harness,
) -> None:
    old = h.board("npu-1")
    new = h.board("npu-1")
    assert not old.open and new.open
    assert h.devices()["npu-1"]["state"] == "free"


def test_another_board_user_cannot_take_a_live_device_name(h: Harness) -> None:
    h.board("npu-1", user="rack")
    other = h.connect("board", user="intruder")
    error = other.refused(DeviceConflict, bt.Register, device="npu-1", key="npu",
                          address="x:1")
    assert "npu-1" in error
    assert other.open


def test_a_board_cannot_act_on_devices_it_did_not_register(h: Harness) -> None:
    h.board("npu-1")
    other = h.connect("board", user="rack2")
    other.refused(NoSuchDevice, bt.Health, device="npu-1", healthy=False)
    other.refused(NoSuchDevice, bt.Unregister, device="npu-1")
    other.refused(NoSuchDevice, bt.Redeem, device="npu-1", ticket="t")


def test_an_unhealthy_device_is_quarantined_until_it_is_healthy(h: Harness) -> None:
    board = h.board("npu-1")
    board.ok(bt.Health, device="npu-1", healthy=False, detail="driver lost the NPU")
    row = h.devices()["npu-1"]
    assert (row["state"], row["health"]) == ("quarantined", "driver lost the NPU")
    client = h.connect()
    client.ok(ct.Request, key="npu")
    assert client.peer.take("granted") == []
    board.ok(bt.Health, device="npu-1", healthy=True)
    assert len(client.peer.take("granted")) == 1


# --- the life of a request ------------------------------------------------------------


def test_request_grant_redeem_release(h: Harness, logged: list[str]) -> None:
    board = h.board("npu-1")
    client = h.connect(user="ann")
    answer = client.ok(ct.Request, key="npu", lease=30.0)
    assert answer["position"] == 0 and answer["devices"] == 1
    (_, granted), = client.peer.take("granted")
    assert granted["request"] == answer["request"]
    assert granted["device"] == "npu-1" and granted["address"] == "npu-1.lab:9191"
    assert granted["expires_in"] == pytest.approx(30.0)
    assert granted["info"] == ["backend=aipu", "cores=3"]
    assert h.devices()["npu-1"]["state"] == "busy"

    h.advance(2.0)
    redeemed = board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])
    assert redeemed["lease"] == granted["lease"] and redeemed["user"] == "ann"
    assert redeemed["expires_in"] == pytest.approx(28.0)

    client.ok(ct.Release, lease=granted["lease"])
    assert client.peer.take("lease-ended")[0][1]["reason"] == "released"
    (_, revoke), = board.peer.take("revoke")
    assert revoke["lease"] == granted["lease"] and revoke["reason"] == "released"
    assert h.devices()["npu-1"]["state"] == "free"

    _one(logged, f"granted {granted['lease']} on npu-1 to ann for {answer['request']}")
    _one(logged, f"{granted['lease']} on npu-1 claimed by ann")
    _one(logged, f"{granted['lease']} of ann on npu-1 ended released")


def test_a_request_for_a_key_no_board_serves_is_refused_at_once_and_leaves_no_queue(
    h: Harness, logged: list[str],
) -> None:
    h.board("npu-1")
    h.board("cpu-1", key="cpu", user="rack2")
    client = h.connect(user="ann")
    message = client.refused(NoSuchKey, ct.Request, key="npu-x3")
    assert "No device serves key 'npu-x3'" in message
    assert "The keys with devices are: cpu, npu." in message and "--wait-for-board" in message
    assert client.open and client.peer.take() == []
    assert [q["key"] for q in client.ok(ct.ListQueues)["queues"]] == ["cpu", "npu"]
    # Asked to wait for a board, it queues; once it ends, its key is gone from the listing.
    answer = client.ok(ct.Request, key="npu-x3", wait_for_board=True)
    assert answer["devices"] == 0
    _one(logged, f"{answer['request']} of ann for npu-x3 (priority 1) waits at position 1"
         " (1 is next)")
    assert [q["key"] for q in client.ok(ct.ListQueues)["queues"]] == ["cpu", "npu", "npu-x3"]
    client.ok(ct.Cancel, request=answer["request"])
    assert [q["key"] for q in client.ok(ct.ListQueues)["queues"]] == ["cpu", "npu"]
    client.refused(NoSuchKey, ct.ListWaiting, key="npu-x3")


def test_the_answer_to_a_request_arrives_before_its_grant() -> None:
    h = Harness()
    h.board("npu-1")
    client = h.connect()
    order: list[str] = []
    client.peer.notices = _Spy(order)  # type: ignore[assignment]
    client.peer.callRemote(ct.Request, key="npu").addCallback(lambda _: order.append("answer"))
    h.flush()
    assert order == ["answer", "granted"]


class _Spy(list):  # type: ignore[type-arg]
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def append(self, item: Any) -> None:
        self.order.append(item[0])
        super().append(item)


def test_a_waiting_client_gets_its_position_pushed_once_per_interval(h: Harness) -> None:
    waiting = [h.connect(user=f"user{i}") for i in range(4)]
    requests = [c.ok(ct.Request, key="npu", wait_for_board=True)["request"] for c in waiting]
    assert [c.peer.take("position") for c in waiting] == [[]] * 4  # answers said it all
    waiting[0].ok(ct.Cancel, request=requests[0])
    waiting[1].ok(ct.Cancel, request=requests[1])
    h.advance(h.tracker.position_interval - 0.01)
    assert waiting[3].peer.take("position") == []  # not yet: pushes are coalesced
    h.advance(0.01)
    # Two moves within one interval: one push each, with the newest position.
    assert waiting[2].peer.take("position") == [
        ("position", {"request": requests[2], "position": 0, "why": "next in line"})
    ]
    assert waiting[3].peer.take("position") == [
        ("position", {"request": requests[3], "position": 1,
                      "why": "behind user2: they used 0.0 board-hours lately, you used 0.0;"
                             " they asked first"})
    ]
    h.advance(10.0)
    assert [c.peer.take("position") for c in waiting[2:]] == [[], []]


def test_a_waiting_client_hears_why_it_waits_where_it_does(h: Harness) -> None:
    """The answer, the position pushes and the listing say why ("behind ...")."""
    h.board("npu-1")
    holder, low, high = h.connect(user="ann"), h.connect(user="bob"), h.connect(user="cat")
    holder.ok(ct.Request, key="npu")
    answer = low.ok(ct.Request, key="npu")
    assert (answer["position"], answer["why"]) == (0, "next in line")
    high.ok(ct.Request, key="npu", priority=5)
    h.advance(h.tracker.position_interval)
    assert low.peer.take("position") == [
        ("position", {"request": answer["request"], "position": 1,
                      "why": "behind cat: priority 5 > 1"})]
    rows = holder.ok(ct.ListWaiting, key="npu")["waiting"]
    assert [(r["user"], r["why"]) for r in rows] == [
        ("cat", "next in line"), ("bob", "behind cat: priority 5 > 1")]


def test_a_waiting_request_is_granted_when_a_device_frees_up(h: Harness) -> None:
    h.board("npu-1")
    first, second = h.connect(user="ann"), h.connect(user="bob")
    first.ok(ct.Request, key="npu")
    (_, lease), = first.peer.take("granted")
    assert second.ok(ct.Request, key="npu")["position"] == 0
    assert second.peer.take("granted") == []
    first.ok(ct.Release, lease=lease["lease"])
    (_, granted), = second.peer.take("granted")
    assert granted["device"] == "npu-1"


def test_cancel_ends_a_waiting_request(h: Harness, logged: list[str]) -> None:
    client = h.connect(user="ann")
    request = client.ok(ct.Request, key="npu", wait_for_board=True)["request"]
    client.ok(ct.Cancel, request=request)
    (_, ended), = client.peer.take("request-ended")
    assert ended["request"] == request and ended["reason"] == "cancelled"
    assert ended["position"] == 0
    client.refused(NoSuchRequest, ct.Cancel, request=request)
    _one(logged, f"{request} of ann for npu ended cancelled")


def test_a_request_that_waits_too_long_is_ended_and_its_client_told(h: Harness) -> None:
    client = h.connect()
    request = client.ok(ct.Request, key="npu", wait_for_board=True, wait=5.0)["request"]
    h.advance(4.9)
    assert client.peer.take("request-ended") == []
    h.advance(0.1)
    (_, ended), = client.peer.take("request-ended")
    assert ended["request"] == request and ended["reason"] == "timed-out"
    assert ended["waited"] == pytest.approx(5.0)


def test_a_lease_expires_at_its_deadline(h: Harness) -> None:
    board = h.board("npu-1")
    client = h.connect()
    client.ok(ct.Request, key="npu", lease=20.0)
    (_, granted), = client.peer.take("granted")
    h.advance(5.0)
    board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])
    for _ in range(3):
        h.advance(4.0)
        board.ok(bt.Heartbeat)
    h.advance(2.99)
    assert client.peer.take("lease-ended") == []
    h.advance(0.01)
    assert client.peer.take("lease-ended")[0][1]["reason"] == "expired"
    assert board.peer.take("revoke")[0][1]["reason"] == "expired"


def test_a_disconnecting_client_has_its_requests_withdrawn_and_its_leases_ended(
    h: Harness,
) -> None:
    board = h.board("npu-1")
    leaver, other = h.connect(user="ann"), h.connect(user="bob")
    leaver.ok(ct.Request, key="npu")
    (_, granted), = leaver.peer.take("granted")
    board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])  # its session opened
    leaver.ok(ct.Request, key="npu")  # waits behind its own lease
    other_request = other.ok(ct.Request, key="npu")["request"]
    leaver.disconnect()
    (_, revoke), = board.peer.take("revoke")
    assert revoke["lease"] == granted["lease"] and revoke["reason"] == "client-lost"
    (_, next_grant), = other.peer.take("granted")  # not the leaver's waiting request
    assert next_grant["request"] == other_request
    viewer = h.connect(user="viewer")
    assert viewer.ok(ct.ListWaiting, key="npu")["waiting"] == []


# --- access --------------------------------------------------------------------------

TOKENS = {
    hash_token("admin-token"): Identity("root", frozenset({"admin"})),
    hash_token("ann-token"): Identity("ann", frozenset({"client"})),
    hash_token("bob-token"): Identity("bob", frozenset({"client"}), ("cpu-*",)),
    hash_token("board-token"): Identity("rack", frozenset({"board"})),
}


@pytest.fixture
def secured() -> Harness:
    harness = Harness(access=Access(TOKENS))
    harness.viewer_token = "ann-token"
    return harness


# --- refusals -------------------------------------------------------------------------


def test_releasing_someone_elses_lease_is_refused_as_not_yours(h: Harness) -> None:
    h.board("npu-1")
    ann, bob = h.connect(user="ann"), h.connect(user="bob")
    ann.ok(ct.Request, key="npu")
    (_, granted), = ann.peer.take("granted")
    error = bob.refused(NotYourLease, ct.Release, lease=granted["lease"])
    assert "ann" in error and granted["lease"] in error
    assert h.devices()["npu-1"]["holder"] == "ann"
    bob.refused(NoSuchLease, ct.Release, lease="lease-999")


def test_cancelling_someone_elses_request_is_refused_as_not_yours(secured: Harness) -> None:
    ann = secured.connect(token="ann-token")
    bob = secured.connect(token="bob-token")
    request = ann.ok(ct.Request, key="npu", wait_for_board=True)["request"]
    bob.refused(NotYourLease, ct.Cancel, request=request)
    assert ann.peer.take("request-ended") == []


def test_a_ticket_is_good_once(h: Harness, logged: list[str]) -> None:
    board = h.board("npu-1")
    client = h.connect()
    client.ok(ct.Request, key="npu")
    (_, granted), = client.peer.take("granted")
    board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])
    error = board.refused(TicketRejected, bt.Redeem, device="npu-1", ticket=granted["ticket"])
    assert "already used" in error
    board.refused(TicketRejected, bt.Redeem, device="npu-1", ticket="made-up")
    assert board.open
    assert len([line for line in logged if "refused a ticket" in line]) == 2


def test_a_ticket_for_another_device_is_refused(h: Harness) -> None:
    board = h.board("npu-1", "npu-2")
    client = h.connect()
    client.ok(ct.Request, key="npu")
    (_, granted), = client.peer.take("granted")
    other = "npu-2" if granted["device"] == "npu-1" else "npu-1"
    why = board.refused(NoSuchDevice, bt.Redeem, device=other, ticket=granted["ticket"])
    assert other in why and granted["device"] not in why
    board.ok(bt.Redeem, device=granted["device"], ticket=granted["ticket"])


def test_values_over_the_limits_are_bad_requests_and_the_connection_stays(h: Harness) -> None:
    client = h.connect()
    assert "64" in client.refused(BadRequest, ct.Request, key="k" * 65)
    client.refused(BadRequest, ct.Request, key="has space")
    client.refused(BadRequest, ct.Request, key="npu", tags=[f"t{i}" for i in range(17)])
    client.refused(BadRequest, ct.Request, key="npu", wait_for_board=True, lease=-1.0)
    client.refused(BadRequest, ct.Request, key="npu", wait_for_board=True, priority=10**7)
    client.refused(BadRequest, ct.ListDevices, limit=101)
    # The largest value AMP can carry is well formed, and refused like any long name.
    assert "65535" in client.refused(BadRequest, ct.Request, key="k" * 65535)
    board = h.connect("board", user="rack")
    board.refused(BadRequest, bt.Register, device="npu-1", key="npu", address="a" * 257)
    board.refused(BadRequest, bt.Register, device="npu-1", key="npu", address="a:1",
                  info=["no equals sign"])
    board.refused(BadRequest, bt.Register, device="npu-1", key="npu", address="a:1",
                  flavor="pytorch")
    assert client.open and board.open
    assert client.ok(ct.Request, key="npu", wait_for_board=True)["position"] == 0


def test_too_many_waiting_requests_of_one_user_are_refused() -> None:
    h = Harness(scheduler=Scheduler(policy=Policy(max_queued_per_user=2)))
    client = h.connect(user="ann")
    client.ok(ct.Request, key="npu", wait_for_board=True)
    client.ok(ct.Request, key="npu", wait_for_board=True)
    assert "ann" in client.refused(LimitExceeded, ct.Request, key="npu", wait_for_board=True)


def test_a_second_hello_is_refused(h: Harness) -> None:
    client = h.connect()
    client.refused(BadRequest, Hello, versions=[PROTOCOL_VERSION], role="client")


def test_a_hello_refused_for_an_overlong_software_name_leaves_the_connection_ungreeted(
    h: Harness,
) -> None:
    conn = h.connect(role=None)
    conn.refused(BadRequest, Hello, versions=[PROTOCOL_VERSION], role="board", user="rack",
                 software="s" * 257)
    assert not conn.server.greeted
    conn.refused(HelloRequired, bt.Heartbeat)
    assert h.clock.getDelayedCalls() == []  # no heartbeat watch for a board never admitted
    conn.ok(Hello, versions=[PROTOCOL_VERSION], role="board", user="rack", software="srv 1")


def test_commands_before_hello_are_refused(h: Harness) -> None:
    conn = h.connect(role=None)
    conn.refused(HelloRequired, ct.Request, key="npu", wait_for_board=True)
    conn.refused(HelloRequired, bt.Register, device="d", key="npu", address="a:1")
    conn.refused(UnsupportedVersion, Hello, versions=[PROTOCOL_VERSION + 1], role="client")
    conn.ok(Hello, versions=[PROTOCOL_VERSION], role="client", user="late")
    assert conn.ok(ct.Request, key="npu", wait_for_board=True)["position"] == 0


def test_a_client_connection_cannot_register_and_a_board_cannot_request(h: Harness) -> None:
    tokens = {
        hash_token("c"): Identity("ann", frozenset({"client"})),
        hash_token("b"): Identity("rack", frozenset({"board"})),
    }
    h = Harness(access=Access(tokens))
    client = h.connect("client", token="c")
    client.refused(NotAuthorized, bt.Register, device="d", key="npu", address="a:1")
    board = h.connect("board", token="b")
    board.refused(NotAuthorized, ct.Request, key="npu")


def test_an_unknown_command_is_unhandled_and_the_tracker_keeps_serving(h: Harness) -> None:
    class Mystery(amp.Command):
        commandName = b"mystery"
        arguments: list[tuple[bytes, amp.Argument]] = []
        response: list[tuple[bytes, amp.Argument]] = []

    asker = h.connect()
    result = asker.call(Mystery)
    assert isinstance(result, Failure) and result.check(amp.UnhandledCommand)
    assert asker.open
    other = h.connect(user="bob")
    assert other.ok(ct.ListQueues)["queues"] == []
    assert asker.ok(ct.Request, key="npu", wait_for_board=True)["position"] == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01\x00" + b"k" * 256,  # a key over AMP's 255-byte limit
        b"\x00\x00",  # an empty box
        b"\x00\x04junk\x00\x01x\x00\x00",  # a box that is no command
    ],
    ids=["oversized-key", "empty-box", "not-a-command"],
)
def test_garbage_closes_that_connection_and_the_tracker_serves_the_others(
    h: Harness, garbage: bytes
) -> None:
    board = h.board("npu-1")
    bad = h.connect(user="mallory")
    bad.ok(ct.Request, key="npu")
    (_, granted), = bad.peer.take("granted")
    board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])
    good = h.connect(user="ann")
    bad.write(garbage)
    assert not bad.open
    # Its lease ended with it and the board was told.
    assert board.peer.take("revoke")[0][1]["lease"] == granted["lease"]
    assert good.open
    good.ok(ct.Request, key="npu")
    assert len(good.peer.take("granted")) == 1


def test_a_bad_token_or_none_is_refused_at_hello(secured: Harness, logged: list[str]) -> None:
    conn = secured.connect(role=None)
    assert "not known" in conn.refused(
        NotAuthorized, Hello, versions=[PROTOCOL_VERSION], role="client", token="wrong"
    )
    assert "needs a token" in conn.refused(
        NotAuthorized, Hello, versions=[PROTOCOL_VERSION], role="client", user="ann"
    )
    conn.refused(NotAuthorized, Hello, versions=[PROTOCOL_VERSION], role="admin",
                 token="ann-token")
    conn.refused(NotAuthorized, Hello, versions=[PROTOCOL_VERSION], role="wizard",
                 token="ann-token")
    conn.refused(HelloRequired, ct.Request, key="npu")
    assert conn.open
    # one warning per address a minute: a flood of bad hellos is not a flood of lines
    assert len([line for line in logged if "refused hello" in line]) == 1
    answer = conn.ok(Hello, versions=[PROTOCOL_VERSION], role="client", token="ann-token")
    assert answer["user"] == "ann" and answer["roles"] == ["client"]


def test_a_user_may_request_only_the_keys_its_token_allows(secured: Harness) -> None:
    bob = secured.connect("client", token="bob-token")
    bob.refused(NotAuthorized, ct.Request, key="npu", wait_for_board=True)
    assert bob.ok(ct.Request, key="cpu-x86", wait_for_board=True)["position"] == 0


@pytest.mark.parametrize(
    "command, arguments",
    [
        (ct.Drain, {"device": "npu-1"}),
        (ct.Undrain, {"device": "npu-1"}),
        (ct.Kick, {"lease": "lease-1"}),
    ],
    ids=["drain", "undrain", "kick"],
)
def test_admin_commands_need_the_admin_role(
    secured: Harness, command: type[amp.Command], arguments: dict[str, Any]
) -> None:
    secured.board("npu-1", token="board-token")
    ann = secured.connect("client", token="ann-token")
    assert "admin" in ann.refused(NotAuthorized, command, **arguments)
    assert secured.devices()["npu-1"]["state"] == "free"


def test_an_admin_drains_and_undrains_a_device(secured: Harness, logged: list[str]) -> None:
    secured.board("npu-1", token="board-token")
    admin = secured.connect("admin", token="admin-token")
    ann = secured.connect("client", token="ann-token")
    ann.ok(ct.Request, key="npu")
    (_, granted), = ann.peer.take("granted")
    admin.ok(ct.Drain, device="npu-1")
    row = secured.devices()["npu-1"]
    assert row["state"] == "draining" and row["holder"] == "ann"
    ann.ok(ct.Release, lease=granted["lease"])
    ann.ok(ct.Request, key="npu")
    assert ann.peer.take("granted") == []  # drained: no new lease
    admin.ok(ct.Undrain, device="npu-1")
    assert len(ann.peer.take("granted")) == 1
    admin.refused(NoSuchDevice, ct.Drain, device="npu-404")
    _one(logged, "admin root drains npu-1")
    _one(logged, "admin root undrains npu-1")


def test_an_admin_kicks_a_lease(secured: Harness) -> None:
    board = secured.board("npu-1", token="board-token")
    admin = secured.connect("admin", token="admin-token")
    ann = secured.connect("client", token="ann-token")
    ann.ok(ct.Request, key="npu")
    (_, granted), = ann.peer.take("granted")
    board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])
    admin.ok(ct.Kick, lease=granted["lease"], reason="maintenance")
    (_, ended), = ann.peer.take("lease-ended")
    assert ended["reason"] == "kicked" and "maintenance" in ended["message"]
    assert board.peer.take("revoke")[0][1]["reason"] == "kicked"
    admin.refused(NoSuchLease, ct.Kick, lease=granted["lease"])


def test_an_admin_cancels_anyones_request(secured: Harness) -> None:
    admin = secured.connect("admin", token="admin-token")
    ann = secured.connect("client", token="ann-token")
    request = ann.ok(ct.Request, key="npu", wait_for_board=True)["request"]
    admin.ok(ct.Cancel, request=request)
    (_, ended), = ann.peer.take("request-ended")
    assert ended["reason"] == "cancelled" and "admin root" in ended["message"]


def test_anonymous_callers_are_plain_clients_when_allowed() -> None:
    h = Harness(access=Access(TOKENS, allow_anonymous=True))
    guest = h.connect(role=None)
    answer = guest.ok(Hello, versions=[PROTOCOL_VERSION], role="client", user="guest")
    assert answer["roles"] == ["client"]
    h.connect(role=None).refused(
        NotAuthorized, Hello, versions=[PROTOCOL_VERSION], role="admin", user="guest"
    )


# --- listings -------------------------------------------------------------------------


def test_the_device_listing_shows_state_holder_and_lease(h: Harness) -> None:
    board = h.board("npu-1", "npu-2")
    board.ok(bt.Register, device="cpu-1", key="cpu", address="c:1")
    client = h.connect(user="ann")
    client.ok(ct.Request, key="npu", lease=100.0)
    (_, granted), = client.peer.take("granted")
    for _ in range(3):
        h.advance(10.0)
        board.ok(bt.Heartbeat)
    rows = h.devices()
    assert sorted(rows) == ["cpu-1", "npu-1", "npu-2"]
    held = rows[granted["device"]]
    assert held["state"] == "busy" and held["holder"] == "ann"
    assert held["lease"] == granted["lease"]
    assert held["held_for"] == pytest.approx(30.0)
    assert held["lease_left"] == pytest.approx(70.0)
    assert held["tags"] == ["x2"] and held["info"] == ["backend=aipu", "cores=3"]
    assert held["health"] == "ok" and held["key"] == "npu"
    free = rows["npu-2" if granted["device"] == "npu-1" else "npu-1"]
    assert free["state"] == "free" and free["holder"] is None and free["lease_left"] is None


def test_the_device_listing_pages(h: Harness) -> None:
    h.board(*[f"npu-{i:02d}" for i in range(5)])
    viewer = h.connect()
    first = viewer.ok(ct.ListDevices, limit=2)
    assert [r["name"] for r in first["devices"]] == ["npu-00", "npu-01"] and first["more"]
    rest = viewer.ok(ct.ListDevices, after="npu-01", limit=3)
    assert [r["name"] for r in rest["devices"]] == ["npu-02", "npu-03", "npu-04"]
    assert not rest["more"]


def test_the_queue_listing_counts_devices_and_waiting_requests(h: Harness) -> None:
    h.board("npu-1", "npu-2")
    h.board("cpu-1", key="cpu", user="rack2")
    clients = [h.connect(user=f"u{i}") for i in range(3)]
    for c in clients:
        c.ok(ct.Request, key="npu")
    viewer = h.connect()
    queues = viewer.ok(ct.ListQueues)
    assert queues["more"] is False
    assert {q["key"]: (q["free"], q["total"], q["waiting"]) for q in queues["queues"]} == {
        "cpu": (1, 1, 0),
        "npu": (0, 2, 1),
    }


def test_the_waiting_listing_shows_requests_in_queue_order(h: Harness) -> None:
    clients = [h.connect(user=f"u{i}") for i in range(3)]
    ids = [c.ok(ct.Request, key="npu", wait_for_board=True, tags=["x2"])["request"]
           for c in clients]
    urgent = h.connect(user="boss").ok(ct.Request, key="npu", wait_for_board=True,
                                       priority=5)["request"]
    h.advance(2.0)
    viewer = h.connect()
    page = viewer.ok(ct.ListWaiting, key="npu", limit=3)
    assert [r["request"] for r in page["waiting"]] == [urgent, *ids[:2]]
    assert [r["position"] for r in page["waiting"]] == [0, 1, 2]
    assert page["more"] is True
    assert page["waiting"][0]["priority"] == 5 and page["waiting"][0]["user"] == "boss"
    assert page["waiting"][1]["tags"] == ["x2"]
    assert page["waiting"][1]["waited"] == pytest.approx(2.0)
    rest = viewer.ok(ct.ListWaiting, key="npu", start=3)
    assert [(r["request"], r["position"]) for r in rest["waiting"]] == [(ids[2], 3)]
    assert rest["more"] is False
    viewer.refused(NoSuchKey, ct.ListWaiting, key="tpu")


# --- logs -----------------------------------------------------------------------------


def test_each_event_is_logged_once(h: Harness, logged: list[str]) -> None:
    board = h.board("npu-1")
    client = h.connect(user="ann")
    request = client.ok(ct.Request, key="npu")["request"]
    (_, granted), = client.peer.take("granted")
    client.disconnect()
    _one(logged, "board rack connected from")
    _one(logged, "client ann connected from")
    _one(logged, "rack registered npu-1 in npu at npu-1.lab:9191")
    _one(logged, f"granted {granted['lease']} on npu-1 to ann for {request}")
    _one(logged, f"{granted['lease']} of ann on npu-1 ended client-lost")
    _one(logged, "client ann at ")
    assert board.open


def test_stopping_the_service_closes_every_connection_and_cancels_its_timers(
    h: Harness,
) -> None:
    board = h.board("npu-1")
    client = h.connect()
    client.ok(ct.Request, key="npu", lease=50.0)
    other = h.connect(user="bob")
    other.ok(ct.Request, key="npu")
    h.tracker.stopService()
    h.flush()
    assert not board.open and not client.open and not other.open
    assert [call for call in h.clock.getDelayedCalls() if call.active()] == []


def test_far_back_in_a_long_queue_a_move_of_one_place_is_not_pushed(h: Harness) -> None:
    from compassd.tracker.service import PUSH_EVERY_CHANGE_UP_TO

    h.board("npu-1")
    holder = h.connect(user="holder")
    holder.ok(ct.Request, key="npu")
    (_, lease), = holder.peer.take("granted")
    count = PUSH_EVERY_CHANGE_UP_TO + 20
    waiting = h.connect(user="crowd")
    requests = [waiting.ok(ct.Request, key="npu")["request"] for _ in range(count)]
    h.advance(h.tracker.position_interval)
    waiting.peer.take("position")
    holder.ok(ct.Release, lease=lease["lease"])  # the first in line is granted
    h.advance(h.tracker.position_interval)
    pushed = {item["request"]: item["position"] for _, item in waiting.peer.take("position")}
    near = requests[1:PUSH_EVERY_CHANGE_UP_TO + 2]
    assert pushed == {r: i for i, r in enumerate(near)}


def test_an_idle_client_holding_nothing_is_closed_after_the_idle_timeout() -> None:
    h = Harness(idle_timeout=100.0)
    idle = h.connect(user="idle")
    chatty = h.connect(user="chatty")
    h.advance(60.0)
    chatty.ok(ct.ListDevices)  # any command resets its timer
    h.advance(40.0)
    assert not idle.server.alive
    assert chatty.server.alive
    h.advance(60.0)
    assert not chatty.server.alive


def test_a_client_waiting_or_holding_a_lease_is_never_idle_closed() -> None:
    h = Harness(idle_timeout=100.0)
    board = h.board("npu-1")
    holder, waiter = h.connect(user="ann"), h.connect(user="bob")
    holder.ok(ct.Request, key="npu", lease=3000.0)
    (_, grant), = holder.peer.take("granted")
    board.ok(bt.Redeem, device="npu-1", ticket=grant["ticket"])
    waiter.ok(ct.Request, key="npu", wait=3000.0)
    for _ in range(100):
        board.ok(bt.Heartbeat)
        h.advance(10.0)
    assert holder.server.alive and waiter.server.alive
    assert board.server.alive
