"""bench/chaos.py's verdicts: what counts as a lost request, a stuck board, a recovery
and a leftover (the pure checks in bench/_chaos_checks.py, on records made here).

The soak itself runs in CI as its own stage (``.ci/run``), not in the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _chaos_checks import lost_requests, recovery, runs_in, stuck_leases  # noqa: E402
from _chaos_system import workdir_leftovers  # noqa: E402


def client(lines: list[dict[str, Any]], killed: bool = False, hung: bool = False,
           name: str = "client-0-0") -> dict[str, Any]:
    return {"name": name, "lines": lines, "killed": killed, "hung": hung}


def request(n: int, t: float = 1.0) -> dict[str, Any]:
    return {"ev": "request", "n": n, "t": t, "key": "chaos-npu"}


def test_a_request_that_ended_at_the_client_is_not_lost() -> None:
    lines = [request(1), {"ev": "granted", "n": 1, "t": 2.0},
             request(2), {"ev": "request-failed", "n": 2, "t": 3.0}]
    assert lost_requests([client(lines)], [], [], set()) == ([], 0)


def test_a_killed_clients_queued_request_needs_an_end_in_the_tracker_audit_log() -> None:
    lines = [request(1), {"ev": "queued", "n": 1, "t": 1.1, "request": "req-7"}]
    ended = [{"event": "request-ended", "request": "req-7", "time": 5.0}]
    assert lost_requests([client(lines, killed=True)], ended, [], set()) == ([], 0)
    lost, _ = lost_requests([client(lines, killed=True)], [], [], set())
    assert len(lost) == 1 and "req-7" in lost[0] and "records" in lost[0]
    history = {"req-7": "withdrawn"}
    assert lost_requests([client(lines, killed=True)], [], [], set(), history) == ([], 0)
    lost, _ = lost_requests([client(lines, killed=True)], [], [4.0], set())
    assert "the tracker was killed after it was queued" in lost[0]


def test_a_killed_client_without_a_request_id_yet_is_counted_as_not_checkable() -> None:
    assert lost_requests([client([request(1)], killed=True)], [], [], set()) == ([], 1)


def test_an_open_request_of_a_live_or_hung_client_and_one_still_waiting_are_lost() -> None:
    lost, _ = lost_requests([client([request(1)]), client([request(1)], hung=True,
                                                          name="client-1-0")],
                            [], [], {"req-9"})
    assert len(lost) == 3
    assert "exited without an end" in lost[0]
    assert "still waiting at the end" in lost[1]
    assert "req-9" in lost[2]


def sample(t: float, state: str, lease: str | None = None, health: str = "ok",
           waiting: set[str] | None = None, held: float | None = None) -> Any:
    row = {"state": state, "lease": lease, "health": health, "held_for": held}
    return (t, {"npu-1": row}, waiting or set())


def test_recovery_waits_for_the_device_free_or_under_a_new_lease_after_the_fault() -> None:
    samples = [sample(0.0, "busy", "lease-1"), sample(1.0, "busy", "lease-1"),
               sample(2.0, "offline"), sample(3.0, "free", health="disk full"),
               sample(4.0, "busy", "lease-2")]
    fault = {"kind": "kill-executor", "at": 0.5, "until": 0.5, "devices": ["npu-1"]}
    assert recovery(samples, fault) == 3.5
    lasting = {"kind": "disk-full", "at": 0.5, "until": 3.5, "devices": ["npu-1"]}
    assert recovery(samples, lasting) == 0.5  # counted from its end
    never = [sample(0.0, "busy", "lease-1"), sample(9.0, "busy", "lease-1")]
    assert recovery(never, fault) is None


def test_after_a_restart_a_board_is_back_once_registered_and_healthy_under_any_lease(
) -> None:
    samples = [sample(0.0, "busy", "lease-1"), sample(1.0, "offline"),
               sample(2.0, "busy", "lease-1", health="disk full"),
               sample(3.0, "busy", "lease-1")]
    for kind in ("kill-tracker", "kill-board", "kill-proxy"):
        fault = {"kind": kind, "at": 0.5, "until": 1.5, "devices": ["npu-1"]}
        assert recovery(samples, fault) == 2.5
    stopped = {"kind": "stop-board", "at": 0.5, "until": 1.5, "devices": ["npu-1"]}
    assert recovery(samples, stopped) == 1.5


def test_recovery_after_a_queued_client_is_killed_is_its_request_leaving_the_queue() -> None:
    samples = [sample(0.0, "busy", waiting={"req-3"}), sample(1.0, "busy", waiting={"req-3"}),
               sample(2.0, "busy", waiting=set())]
    fault = {"kind": "kill-client-queued", "at": 0.5, "until": 0.5, "request": "req-3"}
    assert recovery(samples, fault) == 1.5


def test_a_lease_shown_longer_than_the_limit_is_a_stuck_board() -> None:
    samples = [sample(0.0, "busy", "lease-1", held=10.0), sample(1.0, "busy", "lease-1",
                                                                  held=51.0)]
    assert stuck_leases(samples, 50.0) == ["npu-1: lease lease-1 held 51 s (limit 50 s)"]
    assert stuck_leases(samples[:1], 50.0) == []


def test_runs_are_counted_in_their_phase_window() -> None:
    lines = [{"ev": "run-ok", "t": t} for t in (0.5, 1.0, 1.9, 2.0)]
    assert runs_in([client(lines)], (1.0, 2.0)) == 2


def test_session_directories_and_cache_files_that_are_not_entries_are_leftovers(
        tmp_path: Path) -> None:
    (tmp_path / "session-abc").mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ("a" * 64)).write_bytes(b"x")
    (tmp_path / "cache" / "cached-1234").write_bytes(b"x")
    (tmp_path / "executors").mkdir()
    assert workdir_leftovers(tmp_path) == [str(tmp_path / "session-abc"),
                                           str(tmp_path / "cache" / "cached-1234")]
