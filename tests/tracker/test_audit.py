"""The tracker's audit log: every grant, release, expiry, kick and refusal is one JSON
line with time, event, user, device, lease, request and reason."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.protocol._command import Hello
from compassd.protocol.errors import NotAuthorized, NotYourLease, TicketRejected
from compassd.tracker.access import Access, Identity, hash_token
from compassd.tracker.audit import AuditLog
from compassd.tracker.tap import Options, makeService
from tests.tracker.test_service import Harness

FIELDS = {"time", "event", "user", "device", "lease", "request", "reason", "peer"}


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    for entry in entries:
        assert FIELDS <= set(entry), entry
    return entries


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in lines(stream) if e["event"] == name]


def audited(**kw: Any) -> tuple[Harness, io.StringIO]:
    stream = io.StringIO()
    h = Harness(**kw)
    h.tracker.audit = AuditLog(stream=stream, clock=h.clock.seconds)
    return h, stream


def test_a_registration_grant_claim_and_release_are_each_one_line():
    h, log = audited()
    board = h.board("npu-1")
    client = h.connect(user="ann")
    request = client.ok(ct.Request, key="npu")["request"]
    granted = client.peer.take("granted")[0][1]
    board.ok(bt.Redeem, device="npu-1", ticket=granted["ticket"])
    client.ok(ct.Release, lease=granted["lease"])
    kinds = [e["event"] for e in lines(log)]
    assert kinds == ["hello", "register", "hello", "grant", "claim", "released"]
    grant = events(log, "grant")[0]
    assert (grant["user"], grant["device"], grant["request"], grant["lease"]) == (
        "ann", "npu-1", request, granted["lease"])
    assert events(log, "register")[0]["user"] == "rack"
    assert events(log, "released")[0]["lease"] == granted["lease"]


def test_an_expired_lease_and_a_kick_are_logged_with_their_reason():
    h, log = audited()
    h.board("npu-1", "npu-2")
    client = h.connect(user="ann")
    client.ok(ct.Request, key="npu", lease=5.0)
    client.ok(ct.Request, key="npu", lease=500.0)
    leases = [args["lease"] for _, args in client.peer.take("granted")]
    admin = h.connect(user="root")
    admin.ok(ct.Kick, lease=leases[1], reason="maintenance")
    h.advance(6)
    assert [e["lease"] for e in events(log, "kicked")] == [leases[1]]
    assert "maintenance" in events(log, "kicked")[0]["reason"]
    assert [e["lease"] for e in events(log, "expired")] == [leases[0]]


def test_refusals_are_logged_with_the_sentence_the_caller_got():
    tokens = {hash_token("ann-token"): Identity("ann", frozenset({"client"})),
              hash_token("bob-token"): Identity("bob", frozenset({"client"}))}
    h, log = audited(access=Access(tokens))
    h.viewer_token = "ann-token"
    stranger = h.connect(role=None)
    sentence = stranger.refused(NotAuthorized, Hello, versions=[1], role="client",
                                token="guess")
    ann = h.connect(token="ann-token")
    bob = h.connect(token="bob-token")
    ann.ok(ct.Request, key="npu", wait_for_board=True)
    bob.refused(NotAuthorized, ct.Drain, device="npu-1")
    refused = events(log, "refused")
    assert refused[0]["reason"] == sentence and refused[0]["command"] == "hello"
    assert refused[0]["user"] is None and refused[0]["code"] == "NOT_AUTHORIZED"
    assert (refused[1]["user"], refused[1]["command"]) == ("bob", "drain")


def test_a_release_of_someone_elses_lease_and_a_forged_ticket_are_refusals():
    h, log = audited()
    board = h.board("npu-1")
    ann, bob = h.connect(user="ann"), h.connect(user="bob")
    ann.ok(ct.Request, key="npu")
    lease = ann.peer.take("granted")[0][1]["lease"]
    bob.refused(NotYourLease, ct.Release, lease=lease)
    board.refused(TicketRejected, bt.Redeem, device="npu-1", ticket="forged")
    codes = [(e["user"], e["code"]) for e in events(log, "refused")]
    assert codes == [("bob", "NOT_YOURS"), ("rack", "TICKET_REJECTED")]


def test_the_tracker_option_writes_the_audit_log_to_a_file(tmp_path: Path):
    from twisted.internet.testing import MemoryReactorClock

    path = tmp_path / "audit.jsonl"
    options = Options()
    options.parseOptions(["--audit-log", str(path), "--listen", "tcp:0:interface=127.0.0.1"])
    top = makeService(options, MemoryReactorClock())
    tracker = next(s for s in top if hasattr(s, "scheduler"))
    tracker.record("grant", user="ann", lease="L1")
    entry = json.loads(path.read_text().splitlines()[0])
    assert (entry["event"], entry["user"], entry["lease"], entry["device"]) == (
        "grant", "ann", "L1", None)
