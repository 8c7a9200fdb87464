"""``compass usage`` and ``compass history`` against a real ``twistd compass-tracker`` on
127.0.0.1 with a tokens file: an admin, two users and a board; who sees and resets what."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compassd.cli import EXIT_REFUSED
from compassd.cli.accounting import parse_span, span_text
from compassd.client import UnsupportedVersion
from compassd.tracker.access import hash_token
from tests.helpers import ROOT, daemon_env, daemon_log, registered_board, start_twistd, stop
from tests.test_cli import KEY, at, client, compass

TOKENS = {"root": "admin", "ann": "client", "bob": "client", "rack": "board"}


@attrs.frozen
class Lab:
    address: tuple[str, int]
    audit: Path
    leases: dict[str, str]
    """Each user's lease (held and released before the test starts)."""
    args: tuple[str, ...] = ()
    """The tracker's options, to start it again on the same store."""

    @property
    def where(self) -> str:
        return at(self.address)

    def compass(self, who: str, *args: str) -> Any:
        return compass("--tracker", self.where, *args, env={"COMPASS_TOKEN": f"t-{who}"})


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A tracker with a tokens file and an audit log; a board of KEY; ann and bob each
    held it once. Bob's share is 1000 to ann's 1, so ann has used more per share
    (she comes second) however long each lease took on a loaded machine."""
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(
        f"{hash_token(f't-{user}')} user={user} roles={role}"
        + (" share=2 account=lab account-share=1000" if user == "bob" else "") + "\n"
        for user, role in TOKENS.items()))
    audit = tmp_path / "audit.jsonl"
    args = ("--tokens", str(tokens), "--audit-log", str(audit), "--heartbeat-timeout",
            "600", "--store", str(tmp_path / "tracker.sqlite"))
    proc, port = start_twistd("compass-tracker", *args)
    address = ("127.0.0.1", port)
    try:
        with registered_board(address, device="npu-1", key=KEY, token="t-rack"):
            leases = {}
            for user in ("ann", "bob"):
                with client(address, user, f"t-{user}") as t:
                    lease = t.request(KEY, wait=10)
                    leases[user] = lease.id
                    t.devices()  # one more round trip while it is held
                    lease.release()
        yield Lab(address, audit, leases, args)
    finally:
        stop(proc)
        print(daemon_log(proc))


def entry_point(lab: Lab, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``compass`` as a user runs it: its own process, the token in COMPASS_TOKEN."""
    env = daemon_env()
    env.update({"COMPASS_TOKEN": f"t-{who}", "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "compassd.cli", "--tracker", lab.where, *args],
        cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60)


def test_a_user_sees_their_own_usage_and_their_place(lab: Lab) -> None:
    done = entry_point(lab, "ann", "usage")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if KEY in line and "│" in line]
    assert len(rows) == 1 and " ann " in rows[0] and "bob" not in done.stdout
    assert "In npu-x2 you come 2nd of 2 at one priority: 1 user has used less board" \
        " time per share lately" in done.stdout.replace("\n", " ")
    assert "halve every 1d" in done.stdout
    mine = json.loads(lab.compass("ann", "usage", "--json").stdout)
    [row] = mine["rows"]
    assert (row["name"], row["key"], row["leases"], row["order"], row["of"]) == (
        "ann", KEY, 1, 2, 2)
    assert row["hours"] > 0 and row["decayed"] > 0 and row["share"] == 1.0
    assert mine["since"] == 7 * 86400 and mine["half_life"] == 86400


def test_a_user_cannot_read_or_reset_another_users_usage(lab: Lab) -> None:
    other = lab.compass("ann", "usage", "--user", "bob")
    assert other.exit_code == EXIT_REFUSED
    assert other.stderr == ("compass: User ann may see only their own usage, not bob's; an"
                            " admin sees everyone's.\n")
    reset = entry_point(lab, "ann", "usage", "--reset", "bob")
    assert reset.returncode == EXIT_REFUSED
    assert reset.stderr == "compass: User ann may not do that: it needs the admin role.\n"
    everyone = lab.compass("bob", "usage", "--reset")
    assert everyone.exit_code == EXIT_REFUSED
    root = json.loads(lab.compass("root", "usage", "--json").stdout)
    assert all(row["decayed"] > 0 for row in root["rows"])  # nothing was reset
    events = [json.loads(line) for line in lab.audit.read_text().splitlines()]
    assert [(e["user"], e["command"]) for e in events if e["event"] == "refused"] == [
        ("ann", "usage"), ("ann", "reset-usage"), ("bob", "reset-usage")]


def test_an_admin_sees_everyone_by_user_account_and_device_and_resets_one_user(
    lab: Lab,
) -> None:
    everyone = json.loads(lab.compass("root", "usage", "--json").stdout)
    users = {row["name"]: row for row in everyone["rows"]}
    assert set(users) == {"ann", "bob"} and users["bob"]["share"] == 1000.0
    assert (users["bob"]["order"], users["ann"]["order"]) == (1, 2)
    accounts = json.loads(lab.compass("root", "usage", "--by", "account", "--json").stdout)
    assert {row["name"] for row in accounts["rows"]} == {"ann", "lab"}
    devices = lab.compass("root", "usage", "--by", "device", "--csv")
    assert devices.stdout.splitlines()[0] == (
        "key,name,leases,hours,unserved,wait_p50,wait_p95,share,decayed,order,of")
    assert devices.stdout.splitlines()[1].startswith(f"{KEY},npu-1,2,")
    done = entry_point(lab, "root", "usage", "--reset", "ann")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ann's fair-share usage is forgotten on {KEY}.\n"
    after = {row["name"]: row for row in
             json.loads(lab.compass("root", "usage", "--json").stdout)["rows"]}
    assert after["ann"]["decayed"] == 0.0 and after["bob"]["decayed"] > 0
    assert (after["ann"]["order"], after["ann"]["leases"]) == (1, 1)  # history stays
    [event] = [json.loads(line) for line in lab.audit.read_text().splitlines()
               if '"usage-reset"' in line]
    assert (event["user"], event["target"], event["keys"]) == ("root", "ann", [KEY])
    table = lab.compass("root", "usage")
    assert " ann " in table.stdout and " bob " in table.stdout


def test_history_shows_a_user_their_own_leases_and_an_admin_everyones(lab: Lab) -> None:
    done = entry_point(lab, "ann", "history")
    assert done.returncode == 0, done.stderr
    assert lab.leases["ann"] in done.stdout and lab.leases["bob"] not in done.stdout
    assert "released" in done.stdout and "npu-1" in done.stdout
    mine = json.loads(lab.compass("ann", "history", "--json").stdout)
    [row] = mine["rows"]
    assert (row["id"], row["user"], row["device"], row["outcome"], row["kind"]) == (
        lab.leases["ann"], "ann", "npu-1", "released", "lease")
    assert row["requested_at"] <= row["granted_at"] <= row["ended_at"] <= mine["now"]
    refused = lab.compass("ann", "history", "--user", "bob")
    assert refused.exit_code == EXIT_REFUSED and "only their own history" in refused.stderr
    everyone = json.loads(lab.compass("root", "history", "--json").stdout)
    assert [r["id"] for r in everyone["rows"]] == [lab.leases["bob"], lab.leases["ann"]]
    bobs = json.loads(lab.compass("root", "history", "--user", "bob", "--json").stdout)
    assert [r["id"] for r in bobs["rows"]] == [lab.leases["bob"]]
    one = json.loads(lab.compass("root", "history", "--limit", "1", "--json").stdout)
    assert [r["id"] for r in one["rows"]] == [lab.leases["bob"]] and one["more"]
    none = json.loads(lab.compass("root", "history", "--device", "npu-9", "--json").stdout)
    assert none["rows"] == [] and not none["more"]
    recent = json.loads(lab.compass("root", "history", "--since", "1h", "--json").stdout)
    assert len(recent["rows"]) == 2
    csv_rows = lab.compass("root", "history", "--csv").stdout.splitlines()
    assert csv_rows[0].startswith("id,kind,user,key,device") and len(csv_rows) == 3


def test_history_and_board_hours_come_back_from_the_store_after_a_restart(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{hash_token(f't-{user}')} user={user} roles={role}\n"
                              for user, role in TOKENS.items()))
    args = ("--tokens", str(tokens), "--heartbeat-timeout", "600", "--store",
            str(tmp_path / "tracker.sqlite"))
    proc, port = start_twistd("compass-tracker", *args)
    try:
        address = ("127.0.0.1", port)
        with registered_board(address, device="npu-1", key=KEY, token="t-rack"), \
                client(address, "ann", "t-ann") as t:
            lease = t.request(KEY, wait=10)
            lease.release()
            first = lease.id
    finally:
        stop(proc)
        print(daemon_log(proc))
    proc, port = start_twistd("compass-tracker", *args)  # the same store, a new start
    try:
        lab = Lab(("127.0.0.1", port), tmp_path / "no-audit", {})
        found = json.loads(lab.compass("root", "history", "--json").stdout)
        assert found["history"] == "store"
        assert [(r["id"], r["user"], r["outcome"]) for r in found["rows"]] == [
            (first, "ann", "released")]
        usage = json.loads(lab.compass("ann", "usage", "--json").stdout)
        [row] = usage["rows"]
        assert (row["name"], row["leases"]) == ("ann", 1) and row["hours"] > 0
        text = entry_point(lab, "ann", "history")
        assert first in text.stdout and "From the tracker's store." in text.stdout
    finally:
        stop(proc)
        print(daemon_log(proc))


def test_a_tracker_without_the_reports_feature_is_not_asked(lab: Lab) -> None:
    with client(lab.address, "root", "t-root") as t:
        assert "reports-1" in t._tracker.features
        t._tracker.features = frozenset()  # as an older tracker says hello
        with pytest.raises(UnsupportedVersion, match="does not answer usage reports: it"
                           " is older than this client. Upgrade compass-tracker."):
            t.usage()


def test_a_bad_span_is_a_usage_error_with_a_sentence() -> None:
    result = compass("usage", "--since", "a week")
    assert result.exit_code == 2
    assert "'a week' is not a span of time: say 7d, 12h, 30m, 90s or 2w." in result.stderr


@given(st.integers(min_value=1, max_value=10**7),
       st.sampled_from(["", "s", "m", "h", "d", "w"]))
def test_a_span_reads_back_from_its_text(count: int, unit: str) -> None:
    seconds = parse_span(f"{count}{unit}")
    assert seconds == count * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400,
                               "w": 604800}[unit]
    assert parse_span(span_text(seconds)) == seconds
