"""While a 1 GiB download is hashed, the board keeps its heartbeat and its registration.

A real tracker (L{TrackerService} with a 0.3 s heartbeat timeout, so a heartbeat every
0.1 s) listens on 127.0.0.1; a real L{TrackerLink} registers a board with it over TCP;
both run on the test's reactor, as they do in their daemons. The board then opens a
1 GiB session file for download with the board's own thread runner
(L{compassd.server.upload.open_download}). Hashing 1 GiB takes far longer than 0.3 s, so
had it run on the reactor thread the tracker would have dropped the board (and the
link would have registered again) and no reactor turn would have happened meanwhile.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread

from compassd.server.sessiondir import SessionDirectory
from compassd.server.tracker_link import BoardDescription, TrackerLink
from compassd.server.upload import open_download
from compassd.tracker.records import Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.service import TrackerService

GIB = 1 << 30
DEADLINE = 120.0


def _big_file(path: Path) -> str:
    """A 1 GiB file of varied bytes (not sparse), and its SHA-256."""
    block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(GIB // len(block)):
            piece = block[i % 32:] + block[:i % 32]
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


@pytest_twisted.inlineCallbacks
def test_a_board_hashing_a_1_gib_download_keeps_its_heartbeat_and_registration(
        tmp_path: Path) -> Any:
    directory = SessionDirectory.create(tmp_path / "work", max_upload=2 * GIB, session="h")
    try:
        expected = _big_file(directory.files / "big.bin")
    except OSError as e:
        directory.destroy()
        pytest.skip(f"no room for a 1 GiB file here: {e}")
    tracker = TrackerService(reactor=reactor, scheduler=Scheduler(policy=Policy()),
                             heartbeat_timeout=0.3)
    tracker.startService()
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        tracker.factory())
    link = TrackerLink(reactor, f"tcp:host=127.0.0.1:port={port.getHost().port}",
                       BoardDescription(device="board-1", key="demo", address="x:1"),
                       on_revoke=lambda *args: None)
    link.startService()
    turns = [0]
    ticker = LoopingCall(lambda: turns.__setitem__(0, turns[0] + 1))
    try:
        for _ in range(int(DEADLINE / 0.05)):  # registered, and a heartbeat answered
            if link.registered and link.registrations == 1:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        assert link.registered, "the board never registered"
        yield deferLater(reactor, 0.3, lambda: None)
        assert link.registrations == 1
        ticker.start(0.01, now=False)
        downloading: Deferred[Any] = open_download(directory, "big.bin",
                                                    in_thread=deferToThread)
        download = yield downloading.addTimeout(DEADLINE, reactor)
        during = turns[0]
        download.close()
        assert download.size == GIB and download.sha256 == expected
        # the reactor went on turning while the thread hashed ...
        assert during > 0, "no reactor turn happened while 1 GiB was hashed"
        # ... so the tracker heard every heartbeat and kept the board
        assert link.registered and link.registrations == 1
        device = tracker.scheduler.devices["board-1"]
        assert device.online
    finally:
        if ticker.running:
            ticker.stop()
        yield link.stopService()
        yield port.stopListening()
        yield tracker.stopService()
        directory.destroy()
