"""An executor that does not become ready in time is killed, and says why."""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from compassd.executor.handle import spawn_executor
from compassd.protocol.errors import ExecutorDied
from tests.fakedriver.build import build_fake_driver


@pytest_twisted.inlineCallbacks
def test_an_executor_not_ready_in_time_is_killed_with_a_sentence() -> Any:
    handle = spawn_executor(reactor, "aipu", str(build_fake_driver()), tag="slow",
                            ready_timeout=0.01)  # no Python starts that fast
    try:
        with pytest.raises(ExecutorDied, match="not ready within 0.01 s"):
            yield handle.ready.addTimeout(30, reactor)
        ended = yield handle.ended.addTimeout(30, reactor)
        assert "signal 9" in ended and not handle.alive
    finally:
        if handle.alive and handle.pid:
            os.kill(handle.pid, 9)
