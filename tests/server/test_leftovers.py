"""What a server that died leaves behind is removed by its next start, and nothing else.

The records (L{compassd.server.leftovers.Workdir}) against real processes and files; the
end-to-end tests in test_board_death.py kill a real compass-server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compassd.server.leftovers import Workdir, WorkdirBusy, process_start_time
from compassd.server.sessiondir import SessionDirectory


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _gone(proc: subprocess.Popen[bytes], deadline: float = 10.0) -> bool:
    try:
        proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_a_second_server_on_the_same_work_directory_is_refused(tmp_path: Path) -> None:
    first, second = Workdir(tmp_path), Workdir(tmp_path)
    first.lock()
    try:
        with pytest.raises(WorkdirBusy) as caught:
            second.lock()
        assert f"pid {os.getpid()}" in str(caught.value)
        assert "--workdir" in str(caught.value)
    finally:
        first.unlock()
    second.lock()  # free once the first let go
    second.unlock()


def test_a_recorded_executor_that_still_runs_is_killed(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    records = Workdir(tmp_path)
    records.record_executor(sleeper.pid)
    assert (tmp_path / "executors" / str(sleeper.pid)).exists()
    killed = Workdir(tmp_path).kill_leftover_executors()
    assert killed == [f"executor process {sleeper.pid}"]
    assert _gone(sleeper)
    assert sleeper.returncode == -signal.SIGKILL
    assert list((tmp_path / "executors").iterdir()) == []


def test_a_pid_now_used_by_another_process_is_not_killed(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    started = process_start_time(sleeper.pid)
    assert started is not None
    (tmp_path / "executors").mkdir()
    # the same pid, but a process that started at another time: not ours
    (tmp_path / "executors" / str(sleeper.pid)).write_text(str(int(started) + 1))
    assert Workdir(tmp_path).kill_leftover_executors() == []
    assert sleeper.poll() is None
    assert list((tmp_path / "executors").iterdir()) == []


def test_a_forgotten_executor_is_left_alone(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    records = Workdir(tmp_path)
    records.record_executor(sleeper.pid)
    records.forget_executor(sleeper.pid)
    assert records.kill_leftover_executors() == []
    assert sleeper.poll() is None


def test_recorded_arenas_are_removed_and_nothing_else(tmp_path: Path) -> None:
    work, shm = tmp_path / "work", tmp_path / "shm"
    work.mkdir()
    shm.mkdir()
    arena = shm / "compass-arena-b1-123-abc"
    arena.write_bytes(b"\0" * 64)
    SessionDirectory.create(work, 1 << 20, "aaaa").note_arena(arena)
    precious = shm / "precious.db"
    precious.write_text("keep")
    SessionDirectory.create(work, 1 << 20, "bbbb").note_arena(precious)
    link = shm / "compass-arena-link"
    link.symlink_to(precious)
    SessionDirectory.create(work, 1 << 20, "cccc").note_arena(link)
    removed = Workdir(work).remove_recorded_arenas()
    assert removed == [str(arena)]
    assert not arena.exists()
    assert precious.read_text() == "keep"
    assert link.is_symlink()


def test_the_start_time_of_a_zombie_is_none(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    end = time.monotonic() + 10
    while process_start_time(proc.pid) is not None:  # exited, not yet reaped: a zombie
        assert time.monotonic() < end, "the child never exited"
        time.sleep(0.01)
    proc.wait(timeout=10)
