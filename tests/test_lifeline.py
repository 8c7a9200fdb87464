"""An executor never outlives its server: the parent check, and the executor's own exit
when it starts after its server is gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compassd.executor.handle import executor_argv
from compassd.lifeline import ParentWatch, die_with_parent
from tests.helpers import daemon_env


def test_the_watch_fires_once_when_the_parent_changes() -> None:
    parents = [100, 100, 1, 1]
    fired: list[bool] = []
    watch = ParentWatch(100, lambda: fired.append(True), getppid=lambda: parents.pop(0))
    assert watch.check() is True
    assert watch.check() is True
    assert fired == []
    assert watch.check() is False
    assert watch.check() is False
    assert fired == [True]


def test_without_a_parent_pid_nothing_is_checked() -> None:
    assert die_with_parent(None) is True


@pytest.mark.parametrize("how", ["start", "module"])
def test_an_executor_whose_server_is_already_gone_exits_at_once(how: str) -> None:
    # pid 1 is never this test's pid: the executor's parent is not the "server" it names
    wrong_parent = 1 if os.getpid() != 1 else 2
    argv = (executor_argv("onnx", parent=wrong_parent) if how == "start" else
            [sys.executable, "-m", "compassd.executor", "--backend", "onnx", "--parent",
             str(wrong_parent)])
    done = subprocess.run(argv, env=daemon_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the board server that started it is gone" in done.stderr
    if how == "start":  # it left before loading anything heavy
        assert "compassd.executor" not in done.stderr
