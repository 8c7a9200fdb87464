"""The tracker's usage reports, history and usage resets, over in-memory connections with
a L{Clock} (exact numbers); who may see and reset what."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred

from compassd.protocol import BadRequest, Hello, NotAuthorized
from compassd.protocol import accounting as pa
from compassd.protocol import client_tracker as ct
from compassd.tracker.access import Access, Identity, hash_token, shares_of
from compassd.tracker.audit import AuditLog
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.store import (
    HistoryQuery,
    Journal,
    LiveState,
    StoreError,
    UsageGroup,
    UsageQuery,
)
from compassd.tracker.store.sqlite import SqliteStore
from tests.tracker.test_service import Conn, Harness

HOUR = 3600.0


def tokens() -> Access:
    return Access({
        hash_token("root"): Identity("root", frozenset({"admin"})),
        hash_token("ann"): Identity("ann", frozenset({"client"}), account="physics"),
        hash_token("bob"): Identity("bob", frozenset({"client"}), share=2.0),
        hash_token("cat"): Identity("cat", frozenset({"client"}), account="physics"),
        hash_token("rack"): Identity("rack", frozenset({"board"})),
    })


@pytest.fixture
def h() -> Harness:
    access = tokens()
    policy = Policy(default_lease=100 * HOUR, max_lease=100 * HOUR, claim_timeout=None,
                    shares=shares_of(access.tokens))
    harness = Harness(access=access, audit=AuditLog(stream=io.StringIO()),
                      scheduler=Scheduler(policy=policy), heartbeat_timeout=1000 * HOUR,
                      idle_timeout=None)
    harness.viewer_token = "root"
    return harness


def hold(h: Harness, who: Conn, seconds: float, key: str = "npu") -> str:
    """C{who} asks for a device of C{key}, gets it at once, holds it C{seconds}, gives
    it back; the lease id."""
    who.ok(ct.Request, key=key)
    [(_, granted)] = who.peer.take("granted")
    h.advance(seconds)
    who.ok(ct.Release, lease=granted["lease"])
    return str(granted["lease"])


def by_name(answer: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["key"], row["name"]): row for row in answer["rows"]}


def test_the_hello_answer_lists_the_reports_feature(h: Harness) -> None:
    answer = h.connect(role=None).ok(Hello, versions=[1], role="client", token="ann")
    assert answer["features"] == [pa.FEATURE_REPORTS]


def test_an_admin_sees_board_hours_waits_shares_and_the_order_of_everyone(h: Harness) -> None:
    h.board("npu-1", token="rack")
    ann, bob = h.connect(token="ann"), h.connect(token="bob")
    hold(h, ann, 2 * HOUR)
    hold(h, bob, 1 * HOUR)
    bob.ok(ct.Request, key="npu")  # bob waits 0 s and holds it ...
    [(_, granted)] = bob.peer.take("granted")
    ann.ok(ct.Request, key="npu")  # ... while ann waits for it
    h.advance(0.5 * HOUR)
    bob.ok(ct.Release, lease=granted["lease"])
    ann.peer.take("granted")
    root = h.connect(token="root")
    report = by_name(root.ok(pa.Usage))
    assert set(report) == {("npu", "ann"), ("npu", "bob")}
    a, b = report["npu", "ann"], report["npu", "bob"]
    assert a["leases"] == 2 and a["hours"] == pytest.approx(2.0)  # the second is held now
    assert b["leases"] == 2 and b["hours"] == pytest.approx(1.5)
    assert a["wait_p95"] == pytest.approx(0.5 * HOUR) and a["wait_p50"] == 0.0
    assert (a["share"], b["share"]) == (0.5, 2.0)  # ann shares physics' 1 with cat
    # decayed with a day's half-life: ann's 2 h ended 1.5 h ago, bob's are more recent
    assert 1.8 < a["decayed"] < 2.0 and 1.4 < b["decayed"] < 1.5
    assert (b["order"], a["order"], a["of"]) == (1, 2, 2)


def test_a_user_sees_only_their_own_row_and_their_place(h: Harness) -> None:
    h.board("npu-1", token="rack")
    ann, bob = h.connect(token="ann"), h.connect(token="bob")
    hold(h, ann, HOUR)  # 1 h on a share of 0.5 (physics' 1, split with cat)
    hold(h, bob, 6 * HOUR)  # 6 h on a share of 2
    mine = ann.ok(pa.Usage)
    assert [(r["name"], r["order"], r["of"]) for r in mine["rows"]] == [("ann", 1, 2)]
    assert ann.ok(pa.Usage, user="ann")["rows"] == mine["rows"]
    refused = ann.refused(NotAuthorized, pa.Usage, user="bob")
    assert refused == ("User ann may see only their own usage, not bob's; an admin sees"
                       " everyone's.")
    by_key = ann.ok(pa.Usage, by="key")["rows"]
    assert [(r["name"], r["hours"]) for r in by_key] == [("npu", pytest.approx(1.0))]


def test_a_report_by_account_key_and_device_adds_up_the_same_hours(h: Harness) -> None:
    h.board("npu-1", "npu-2", token="rack")
    ann, bob, cat = (h.connect(token=t) for t in ("ann", "bob", "cat"))
    hold(h, ann, HOUR)
    hold(h, cat, 2 * HOUR)
    hold(h, bob, 4 * HOUR)
    root = h.connect(token="root")
    accounts = by_name(root.ok(pa.Usage, by="account"))
    assert accounts["npu", "physics"]["hours"] == pytest.approx(3.0)
    assert accounts["npu", "physics"]["share"] == pytest.approx(1.0)  # ann's and cat's
    assert accounts["npu", "bob"]["hours"] == pytest.approx(4.0)
    keys = by_name(root.ok(pa.Usage, by="key"))
    assert keys["npu", "npu"]["hours"] == pytest.approx(7.0)
    assert keys["npu", "npu"]["leases"] == 3 and keys["npu", "npu"]["order"] is None
    devices = root.ok(pa.Usage, by="device")["rows"]
    assert sum(r["hours"] for r in devices) == pytest.approx(7.0)


def test_the_window_cuts_leases_at_its_start(h: Harness) -> None:
    h.board("npu-1", token="rack")
    ann = h.connect(token="ann")
    hold(h, ann, 10 * HOUR)
    h.advance(HOUR)
    root = h.connect(token="root")
    report = by_name(root.ok(pa.Usage, since=2 * HOUR))
    assert report["npu", "ann"]["hours"] == pytest.approx(1.0)
    assert report["npu", "ann"]["wait_p50"] is None  # granted before the window
    assert root.ok(pa.Usage, since=30 * 60.0)["rows"][0]["hours"] == 0.0


def test_a_report_page_is_bounded_and_bad_arguments_are_refused(h: Harness) -> None:
    root = h.connect(token="root")
    assert "not 'team'" in root.refused(BadRequest, pa.Usage, by="team")
    assert "1 to 100" in root.refused(BadRequest, pa.Usage, limit=101)
    assert "1 to 50" in root.refused(BadRequest, pa.History, limit=51)
    assert "together" in root.refused(BadRequest, pa.History, before_at=1.0)


def test_only_an_admin_resets_usage_and_the_reset_is_audited_and_reorders_the_queue(
    h: Harness,
) -> None:
    h.board("npu-1", token="rack")
    ann, bob, cat = (h.connect(token=t) for t in ("ann", "bob", "cat"))
    hold(h, ann, 5 * HOUR)
    hold(h, bob, 1 * HOUR)
    cat.ok(ct.Request, key="npu")  # cat holds the board while ann and bob wait
    [(_, held)] = cat.peer.take("granted")
    mine = ann.ok(ct.Request, key="npu")["request"]
    bob.ok(ct.Request, key="npu")
    h.advance(h.tracker.position_interval)
    [(_, behind)] = ann.peer.take("position")
    assert (behind["position"], behind["why"]) == (
        1, "behind bob: they used 1.0 board-hours lately, you used 4.5 (shares 2 and 0.5)")
    root = h.connect(token="root")
    before = {r["user"]: r["position"] for r in root.ok(ct.ListWaiting, key="npu")["waiting"]}
    assert before == {"bob": 0, "ann": 1}
    refusal = ann.refused(NotAuthorized, pa.ResetUsage, user="ann")
    assert refusal == "User ann may not do that: it needs the admin role."
    assert root.ok(pa.ResetUsage, user="ann")["keys"] == ["npu"]
    h.advance(h.tracker.position_interval)
    after = {r["user"]: r["position"] for r in root.ok(ct.ListWaiting, key="npu")["waiting"]}
    assert after == {"ann": 0, "bob": 1}
    assert ann.peer.take("position")[-1] == (
        "position", {"request": mine, "position": 0, "why": "next in line"})
    assert by_name(root.ok(pa.Usage))["npu", "ann"]["decayed"] == 0.0
    assert root.ok(pa.ResetUsage, user="zed")["keys"] == []
    assert root.ok(pa.ResetUsage)["keys"] == ["npu"]
    audit = h.tracker.audit
    assert audit is not None and isinstance(audit.stream, io.StringIO)
    lines = [json.loads(line) for line in audit.stream.getvalue().splitlines()]
    resets = [(x["user"], x["target"], x["keys"]) for x in lines if x["event"] == "usage-reset"]
    assert resets == [("root", "ann", ["npu"]), ("root", "zed", []),
                      ("root", "everyone", ["npu"])]
    refused = [x for x in lines if x["event"] == "refused"]
    assert [(x["user"], x["command"]) for x in refused] == [("ann", "reset-usage")]
    cat.ok(ct.Release, lease=held["lease"])


def test_history_lists_ended_leases_and_unserved_requests_newest_first(h: Harness) -> None:
    h.board("npu-1", token="rack")
    ann, bob = h.connect(token="ann"), h.connect(token="bob")
    first = hold(h, ann, 60)
    second = hold(h, bob, 120)
    waiting = ann.ok(ct.Request, key="gpu", wait_for_board=True)["request"]  # no pool: waits
    h.advance(30)
    ann.ok(ct.Cancel, request=waiting)
    root = h.connect(token="root")
    answer = root.ok(pa.History)
    rows = answer["rows"]
    assert [(r["id"], r["kind"], r["user"], r["outcome"]) for r in rows] == [
        (waiting, "request", "ann", "cancelled"),
        (second, "lease", "bob", "released"),
        (first, "lease", "ann", "released"),
    ]
    assert rows[1]["ended_at"] - rows[1]["granted_at"] == pytest.approx(120)
    assert rows[1]["device"] == "npu-1" and rows[0]["device"] is None
    assert answer["now"] == h.clock.seconds() and not answer["more"]
    assert answer["history"].startswith("memory since")
    mine = ann.ok(pa.History)["rows"]
    assert {r["user"] for r in mine} == {"ann"} and len(mine) == 2
    assert ann.refused(NotAuthorized, pa.History, user="bob").startswith(
        "User ann may see only their own history")
    assert [r["id"] for r in root.ok(pa.History, user="bob")["rows"]] == [second]
    assert [r["id"] for r in root.ok(pa.History, key="gpu")["rows"]] == [waiting]
    assert [r["id"] for r in root.ok(pa.History, since=100.0)["rows"]] == [waiting, second]
    page = root.ok(pa.History, limit=2)
    assert page["more"] and len(page["rows"]) == 2
    rest = root.ok(pa.History, before_at=page["rows"][-1]["ended_at"],
                   before_id=page["rows"][-1]["id"])
    assert [r["id"] for r in rest["rows"]] == [first] and not rest["more"]


# --- with a store -----------------------------------------------------------------------


def with_store(path: Path, run: Callable[[Callable[[], Any]], Deferred[Any]]) -> Harness:
    """A tracker as the tap makes it: its store at C{path} brought back, its journal
    writing there (C{run} runs the store's calls; here in the test's thread)."""
    store = SqliteStore(str(path))
    store.open()
    snapshot = store.load()
    access = tokens()
    policy = Policy(default_lease=100 * HOUR, max_lease=100 * HOUR, claim_timeout=None,
                    shares=shares_of(access.tokens))
    harness = Harness(access=access, scheduler=Scheduler(policy=policy),
                      heartbeat_timeout=1000 * HOUR, idle_timeout=None)
    harness.tracker.journal = Journal(store, harness.clock, LiveState, run=run,
                                      retention=None)
    harness.tracker.restore(snapshot, 60.0)
    return harness


def pa_query(h: Harness) -> UsageQuery:
    """The query of a week's usage report by user, now."""
    now = h.clock.seconds()
    return UsageQuery(since=now - 7 * 24 * HOUR, until=now)


def test_with_a_store_history_and_hours_outlive_a_restart_and_memory_fills_the_gap(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tracker.sqlite"
    first = with_store(path, lambda call: maybeDeferred(call))
    first.board("npu-1", token="rack")
    ann = first.connect(token="ann")
    old = hold(first, ann, HOUR)
    first.advance(0)  # the journal writes at the end of the turn
    journal = first.tracker.journal
    assert journal is not None
    journal.store.close()
    journal.store.release_lock()  # type: ignore[attr-defined]

    writes: list[Callable[[], Any]] = []

    def held_writes(call: Callable[[], Any]) -> Deferred[Any]:
        """The store's thread is stuck (a slow disk): nothing it is given runs."""
        writes.append(call)
        return Deferred()

    second = with_store(path, held_writes)
    journal = second.tracker.journal
    assert journal is not None
    journal.answer_wait = 0.0  # answers do not wait for the stuck disk (here: at all)
    store = journal.store
    second.tracker.history_reader = lambda q: maybeDeferred(store.history, q)
    second.tracker.usage_reader = lambda q: maybeDeferred(store.usage, q)
    second.clock.advance(2 * HOUR)
    second.board("npu-1", token="rack")
    ann = second.connect(token="ann")
    new = hold(second, ann, HOUR)
    root = second.connect(token="root")
    answer = root.ok(pa.History)
    second.advance(0)  # the journal tries to write, but the disk holds the write
    assert writes
    assert [r.id for r in store.history(HistoryQuery())] == [old]  # so: from memory
    assert [r["id"] for r in answer["rows"]] == [new, old]
    assert answer["history"] == "store" and new != old
    # the store adds up what it has; the row it has not been given yet counts too, once
    assert store.usage(pa_query(second)) == [
        UsageGroup("npu", "ann", 1, HOUR, 0, 1, 0.0, 0.0)]
    answer = root.ok(pa.Usage)
    assert answer["history"] == "store"
    usage = by_name(answer)
    assert usage["npu", "ann"]["leases"] == 2
    assert usage["npu", "ann"]["hours"] == pytest.approx(2.0)
    # a store that cannot add it up leaves the tracker's memory, and says so
    second.tracker.usage_reader = lambda q: fail(StoreError("the disk is gone"))
    answer = root.ok(pa.Usage)
    assert answer["history"].endswith("; the store could not be read (the disk is gone)")
    assert by_name(answer)["npu", "ann"]["leases"] == 1
    # a store that cannot be read leaves the tracker's memory, and says so
    second.tracker.history_reader = lambda q: fail(StoreError("the disk is gone"))
    answer = root.ok(pa.History)
    assert [r["id"] for r in answer["rows"]] == [new]
    assert answer["history"].endswith("; the store could not be read (the disk is gone)")
