"""The ``compass`` command against a real ``twistd compass-tracker`` on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from twisted.internet.defer import Deferred

from compassd.cli import EXIT_REFUSED, EXIT_UNREACHABLE, main
from compassd.client import Tracker, _reactor, connect_tracker
from tests.helpers import (
    ROOT,
    daemon_env,
    free_port,
    registered_board,
    start_twistd,
    stop,
)

KEY = "npu-x2"
WAIT = 10.0


@pytest.fixture
def tracker_args() -> tuple[str, ...]:
    """The boards here send no heartbeats: let them stay silent for the whole test."""
    return ("--heartbeat-timeout", "600")


def compass(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``compass ARGS`` in this process, stdout and stderr apart, on a wide terminal."""
    environment = {"COLUMNS": "200", "COMPASS_TRACKER": None, "COMPASS_TOKEN": None,
                   "COMPASS_USER": None}
    environment.update(env or {})
    try:  # click 8.1 (Debian 12) mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False, env=environment)  # type: ignore[call-arg]
    except TypeError:  # click 8.2 and later always keep them apart
        runner = CliRunner(env=environment)
    return runner.invoke(main, list(args), catch_exceptions=False)


def at(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def client(address: tuple[str, int], user: str, token: str | None = None) -> Tracker:
    return connect_tracker(*address, token, user=user, timeout=5)


def queue_behind(t: Tracker, key: str = KEY) -> list[str]:
    """Queue a request of C{t} for C{key} without waiting for its grant; return a list
    that holds the request id once the tracker has answered."""

    def send() -> Deferred[str]:
        answered: Deferred[str] = Deferred()
        d = t._tracker.request(key, on_queued=lambda r, p, n: answered.callback(r),
                               wait_for_board=True)
        d.addErrback(lambda _: None)  # it ends when the test cancels it or disconnects
        return answered  # a tracker with a store answers once the store has the request

    return [_reactor.call(send)]


# --- help -------------------------------------------------------------------------------


def test_help_explains_the_tracker_token_and_user_options_and_lists_commands() -> None:
    result = compass("--help")
    assert result.exit_code == 0
    for text in ("--tracker", "HOST:PORT", "COMPASS_TRACKER", "--token", "COMPASS_TOKEN",
                 "--user", "status", "drain", "undrain", "kick", "cancel"):
        assert text in result.stdout


def test_status_help_explains_json_and_waiting() -> None:
    result = compass("status", "--help")
    assert result.exit_code == 0
    assert "--json" in result.stdout
    assert "--waiting" in result.stdout
    assert '"devices"' in result.stdout and '"queues"' in result.stdout


# --- reaching the tracker ---------------------------------------------------------------


def test_status_with_nothing_listening_prints_one_line_and_exits_3() -> None:
    port = free_port()
    result = compass("--tracker", f"127.0.0.1:{port}", "status")
    assert result.exit_code == EXIT_UNREACHABLE == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("compass: ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert result.stdout == ""


def test_installed_entry_point_exits_3_without_a_traceback_when_unreachable() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "compassd.cli", "--tracker", f"127.0.0.1:{port}", "status"],
        cwd=str(ROOT), env=daemon_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_piped_status_keeps_every_value_whole_one_row_per_line(
    tracker: tuple[str, int],
) -> None:
    device = "a-board-with-a-rather-long-name-in-the-far-rack-17"
    where = "board-17.far-rack.lab.example.internal:65001"
    env = daemon_env()
    env.pop("COLUMNS", None)
    with registered_board(tracker, device=device, key=KEY, where=where):
        done = subprocess.run(
            [sys.executable, "-m", "compassd.cli", "--tracker", at(tracker), "status"],
            cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if device in line]
    assert where in row and KEY in row and "free" in row
    assert "…" not in done.stdout


def test_malformed_tracker_address_is_a_usage_error() -> None:
    result = compass("--tracker", "127.0.0.1:notaport", "status")
    assert result.exit_code == 2
    assert "--tracker" in result.stderr


def test_compass_tracker_variable_is_the_default_address(tracker: tuple[str, int]) -> None:
    result = compass("status", "--json", env={"COMPASS_TRACKER": at(tracker)})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"devices": [], "queues": []}


def test_tracker_option_overrides_the_variable(tracker: tuple[str, int]) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    result = compass("--tracker", at(tracker), "status", "--json",
                     env={"COMPASS_TRACKER": nowhere})
    assert result.exit_code == 0, result.stderr


def test_global_options_may_follow_the_subcommand_in_either_form(
    tracker: tuple[str, int],
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (("status", "--tracker", at(tracker), "--json"),
                 ("status", "--json", f"--tracker={at(tracker)}", "--user", "bob"),
                 ("--tracker", nowhere, "status", "--tracker", at(tracker), "--json")):
        result = compass(*args)
        assert result.exit_code == 0, (args, result.stderr)
        assert json.loads(result.stdout) == {"devices": [], "queues": []}


def test_a_global_option_after_the_subcommand_is_checked_like_one_before() -> None:
    result = compass("status", "--json", "--tracker", "127.0.0.1:notaport")
    assert result.exit_code == 2 and "--tracker" in result.stderr
    result = compass("devices", "--cert-key", __file__)
    assert result.exit_code == 2 and "--cert-key needs --cert" in result.stderr


def test_global_options_after_a_command_that_does_not_use_them_change_nothing() -> None:
    result = compass("token", "alice", "--roles", "admin", "--json", "--user", "x")
    assert result.exit_code == 0, result.stderr  # --user is global: token ignores it
    assert json.loads(result.stdout)["line"].endswith("user=alice roles=admin keys=*")


# --- status -----------------------------------------------------------------------------


def test_status_table_shows_devices_and_queues_with_their_columns(
    tracker: tuple[str, int],
) -> None:
    with registered_board(tracker, key=KEY), client(tracker, "alice") as alice, \
            client(tracker, "bob") as bob:
        with alice.request(KEY, wait=WAIT):
            [request] = queue_behind(bob)
            result = compass("--tracker", at(tracker), "status")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    devices, _, queues = out.partition("Queues")
    assert "Devices" in devices
    for column in ("key", "device", "address", "state", "holder", "held for", "lease left",
                   "info"):
        assert column in devices
    assert re.search(r"npu-x2 .*npu-1 .*10\.0\.0\.5:9091 .*busy .*alice", devices)
    assert "target=X2_1204" in devices
    for column in ("key", "free/total", "position", "request", "user", "priority", "waited"):
        assert column in queues
    assert re.search(rf"npu-x2 .*0/1 .*1 .*{request} .*bob .*1", queues)  # position 1


def test_status_table_says_when_nothing_is_registered(tracker: tuple[str, int]) -> None:
    result = compass("--tracker", at(tracker), "status")
    assert result.exit_code == 0, result.stderr
    assert "no devices registered" in result.stdout
    assert "no queues" in result.stdout


def test_status_json_is_one_object_with_device_and_queue_lists(
    tracker: tuple[str, int],
) -> None:
    with registered_board(tracker, key=KEY), client(tracker, "alice") as alice, \
            client(tracker, "bob") as bob:
        with alice.request(KEY, wait=WAIT) as lease:
            [request] = queue_behind(bob)
            result = compass("--tracker", at(tracker), "status", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == {"devices", "queues"}
    [device] = summary["devices"]
    assert (device["name"], device["key"], device["state"], device["holder"],
            device["lease"]) == ("npu-1", KEY, "busy", "alice", lease.id)
    [queue] = summary["queues"]
    assert (queue["key"], queue["free"], queue["total"], queue["count"]) == (KEY, 0, 1, 1)
    assert [(w["request"], w["user"], w["position"]) for w in queue["waiting"]] == [
        (request, "bob", 1)  # counted from 1: next in line
    ]


def test_status_table_shows_the_first_waiting_requests_and_counts_the_rest(
    tracker: tuple[str, int],
) -> None:
    with client(tracker, "bob") as bob:
        requests = [queue_behind(bob)[0] for _ in range(3)]
        result = compass("--tracker", at(tracker), "status", "--waiting", "1")
        full = compass("--tracker", at(tracker), "status", "--json", "--waiting", "1")
    assert result.exit_code == 0, result.stderr
    assert requests[0] in result.stdout
    assert requests[1] not in result.stdout and requests[2] not in result.stdout
    assert "and 2 more" in result.stdout
    [queue] = json.loads(full.stdout)["queues"]
    assert [w["request"] for w in queue["waiting"]] == requests


# --- administration ---------------------------------------------------------------------


def device_state(address: tuple[str, int]) -> Any:
    result = compass("--tracker", at(address), "status", "--json")
    assert result.exit_code == 0, result.stderr
    return {d["name"]: d["state"] for d in json.loads(result.stdout)["devices"]}


def test_drain_and_undrain_take_a_device_out_of_service_and_back(
    tracker: tuple[str, int],
) -> None:
    with registered_board(tracker, key=KEY):
        result = compass("--tracker", at(tracker), "drain", "npu-1")
        assert result.exit_code == 0, result.stderr
        assert "npu-1 is draining" in result.stdout
        assert device_state(tracker) == {"npu-1": "draining"}
        result = compass("--tracker", at(tracker), "undrain", "npu-1")
        assert result.exit_code == 0, result.stderr
        assert "npu-1 is back in service" in result.stdout
        assert device_state(tracker) == {"npu-1": "free"}


def test_drain_of_an_unknown_device_exits_1_with_one_sentence(
    tracker: tuple[str, int],
) -> None:
    result = compass("--tracker", at(tracker), "drain", "npu-404")
    assert result.exit_code == EXIT_REFUSED == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compass: ")
    assert "npu-404" in lines[0]


def test_kick_ends_the_lease_and_frees_the_device(tracker: tuple[str, int]) -> None:
    with registered_board(tracker, key=KEY), client(tracker, "alice") as alice:
        lease = alice.request(KEY, wait=WAIT)
        result = compass("--tracker", at(tracker), "kick", lease.id)
        assert result.exit_code == 0, result.stderr
        assert f"Lease {lease.id} is ended" in result.stdout
        assert device_state(tracker) == {"npu-1": "free"}


def test_cancel_removes_a_waiting_request(tracker: tuple[str, int]) -> None:
    with client(tracker, "bob") as bob:
        [request] = queue_behind(bob)
        result = compass("--tracker", at(tracker), "--user", "bob", "cancel", request)
        assert result.exit_code == 0, result.stderr
        assert f"Request {request} is cancelled" in result.stdout
        assert all(q["count"] == 0 for q in bob.summary()["queues"])


def test_token_line_is_accepted_by_the_tracker_and_roles_are_enforced(
    tmp_path: Path,
) -> None:
    admin = compass("token", "root", "--roles", "admin")
    user = compass("token", "alice")
    tokens: dict[str, str] = {}
    lines = []
    for name, result in (("root", admin), ("alice", user)):
        assert result.exit_code == 0
        found = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
        tokens[name] = found["token"]
        assert tokens[name] not in found["tokens file line"]
        lines.append(found["tokens file line"])
    path = tmp_path / "tokens"
    path.write_text("\n".join(lines) + "\n")
    proc, port = start_twistd("compass-tracker", "--tokens", str(path),
                              "--heartbeat-timeout", "600")
    try:
        address = ("127.0.0.1", port)
        where = at(address)
        refused = compass("--tracker", where, "status")
        assert refused.exit_code == EXIT_REFUSED
        assert "token" in refused.stderr
        ok = compass("--tracker", where, "status", "--json",
                     env={"COMPASS_TOKEN": tokens["alice"]})
        assert ok.exit_code == 0, ok.stderr
        denied = compass("--tracker", where, "--token", tokens["alice"], "drain", "npu-1")
        assert denied.exit_code == EXIT_REFUSED
        assert "admin" in denied.stderr
        allowed = compass("--tracker", where, "--token", tokens["root"], "drain", "npu-1")
        # root may drain; there is no npu-1, so the refusal is about the device
        assert "admin" not in allowed.stderr
        assert "npu-1" in allowed.stderr
    finally:
        stop(proc)


def test_devices_prints_the_devices_table_only(tracker: tuple[str, int]) -> None:
    with registered_board(tracker, key=KEY):
        result = compass("--tracker", at(tracker), "devices")
    assert result.exit_code == 0, result.stderr
    assert "Devices" in result.stdout and "npu-1" in result.stdout
    assert "Queues" not in result.stdout and "no queues" not in result.stdout


def test_demo_refuses_more_samples_than_it_ships_naming_the_limit() -> None:
    result = compass("demo", "--samples", "500")
    assert result.exit_code == 2
    assert "--samples" in result.stderr
    assert "compassd ships 200 held-out samples for the demo, not 500" in result.stderr


def test_token_max_priority_goes_in_the_line_and_the_tracker_holds_the_user_to_it(
    tmp_path: Path,
) -> None:
    from compassd.protocol.errors import NotAuthorized
    from compassd.tracker.access import load_tokens

    made = compass("token", "ci", "--keys", "npu-*", "--max-priority", "10", "--json")
    assert made.exit_code == 0, made.stderr
    answer = json.loads(made.stdout)
    assert answer["line"].endswith(" max-priority=10")
    plain = json.loads(compass("token", "ann", "--json").stdout)
    assert "max-priority" not in plain["line"]
    path = tmp_path / "tokens"
    path.write_text(answer["line"] + "\n" + plain["line"] + "\n")
    proc, port = start_twistd("compass-tracker", "--tokens", str(path),
                              "--heartbeat-timeout", "600")
    try:
        ci = connect_tracker("127.0.0.1", port, token=answer["token"])
        ann = connect_tracker("127.0.0.1", port, token=plain["token"])
        try:
            with pytest.raises(NotAuthorized, match="priority 10 at most, not 11"):
                ci.request("npu-x", priority=11, wait=0.1)
            with pytest.raises(NotAuthorized, match="priority 1 at most, not 2"):
                ann.request("npu-x", priority=2, wait=0.1)
        finally:
            ci.close()
            ann.close()
    finally:
        stop(proc)
    assert load_tokens(path)  # the tracker's own parser takes both lines
    refused = compass("token", "ci", "--max-priority", "lots")
    assert refused.exit_code != 0 and "--max-priority" in refused.stderr
