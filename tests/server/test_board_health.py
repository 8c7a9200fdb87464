"""A board whose executor cannot start says why in its health, which the tracker shows in
``compass status``: a real BoardService on the real reactor, with real executor processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from compassd.server.board import BoardService

DEADLINE = 60.0


def _until(check: Any) -> Deferred[None]:
    """Fires once C{check()} is true (polled every 50 ms), or fails after DEADLINE s."""
    loop = LoopingCall(lambda: check() and loop.stop())
    return loop.start(0.05).addTimeout(DEADLINE, reactor)  # type: ignore[return-value]


@pytest_twisted.inlineCallbacks
def test_a_board_whose_executor_cannot_start_reports_why_in_its_health(
    tmp_path: Path,
) -> Any:
    board = BoardService(reactor, key="cpu", device="broken-1", backend="nosuch",
                         tracker="tcp:127.0.0.1:9", workdir=tmp_path / "work")
    board.startService()
    try:
        yield _until(lambda: "did not start" in board.link.board.health_detail)
    finally:
        yield board.stopService()
    detail = board.link.board.health_detail
    assert not board.link.board.healthy
    assert detail.startswith("the nosuch executor did not start: The executor exited with")
    assert "its last words:" in detail and "invalid choice: 'nosuch'" in detail
