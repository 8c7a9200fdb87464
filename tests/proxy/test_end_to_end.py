"""A real tracker, compass-proxy and compass-server (fake NPU driver) on 127.0.0.1, and
the client: the client only ever connects to the tracker and the proxy.

Every daemon is stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_session, connect_tracker
from compassd.protocol.errors import NoSuchDevice, SessionEnded, TicketRejected
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, start_twistd, stop

WAIT = 30.0


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@pytest.fixture
def proxy(tracker: tuple[str, int]) -> Iterator[str]:
    proc, port = start_twistd("compass-proxy", "--tracker", f"{tracker[0]}:{tracker[1]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        status = stop(proc)
        print(daemon_log(proc))
        assert status in (0, -15), "compass-proxy did not stop cleanly"
        assert "Traceback" not in daemon_log(proc)


def start_board(tracker: tuple[str, int], proxy: str, fake_lib: Path, workdir: Path,
                device: str = "board-1"):
    # The tracker address given is a dead one: the board reaches the tracker only
    # through the proxy.
    return start_twistd(
        "compass-server", "--key", "demo", "--tracker", "127.0.0.1:1",
        "--proxy", proxy, "--backend", "aipu", "--driver", str(fake_lib),
        "--workdir", str(workdir), "--device", device, "--health-interval", "5")


def _device(client, name: str = "board-1") -> dict:
    return {d["name"]: d for d in client.summary()["devices"]}.get(name, {})


def _wait_for(predicate, what: str, deadline: float = WAIT) -> None:
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {deadline:g} s")


def test_request_load_run_release_through_the_proxy(
    tracker: tuple[str, int], proxy: str, fake_lib: Path, tmp_path: Path
) -> None:
    proc, _ = start_board(tracker, proxy, fake_lib, tmp_path / "work")
    try:
        client = connect_tracker(*tracker)
        _wait_for(lambda: _device(client).get("state") == "free", "registration")
        assert _device(client)["address"] == proxy
        model = tmp_path / "add3.bin"
        write_graph(model, [Tensor(4096, "int8")], [Tensor(4096, "int8")],
                    behaviour="add", value=3)
        with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
            assert lease.address == proxy
            loaded = lease.load_model(str(model))
            x = (np.arange(4096) % 100).astype(np.int8)
            for _ in range(3):
                (y,) = loaded.run(x)
                assert y.tolist() == (x + 3).tolist()
            session = lease.open_session()
            payload = os.urandom(3 << 20)
            session.upload(payload, "blob.bin")
            assert session.download("blob.bin") == payload
            assert _device(client)["state"] == "busy"
        _wait_for(lambda: _device(client).get("state") == "free", "release")
        # a second session on the same board, through the same proxy
        with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
            (y,) = lease.load_model(str(model)).run(np.zeros(4096, dtype=np.int8))
            assert y.tolist() == [3] * 4096
    finally:
        assert stop(proc) in (0, -15)
        print(daemon_log(proc))
        assert "Traceback" not in daemon_log(proc)


def test_unknown_device_and_bad_tickets_are_refused_with_a_sentence(
    tracker: tuple[str, int], proxy: str, fake_lib: Path, tmp_path: Path
) -> None:
    with pytest.raises(NoSuchDevice, match="No board named ghost is connected to this proxy"):
        connect_session(proxy, "some-ticket", device="ghost")
    proc, _ = start_board(tracker, proxy, fake_lib, tmp_path / "work")
    try:
        client = connect_tracker(*tracker)
        _wait_for(lambda: _device(client).get("state") == "free", "registration")
        with pytest.raises(TicketRejected, match="not valid"):
            connect_session(proxy, "forged-ticket", device="board-1")
        with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
            lease.open_session()
            ticket = lease.ticket
        with pytest.raises(TicketRejected):
            connect_session(proxy, ticket, device="board-1")
        _wait_for(lambda: _device(client).get("state") == "free", "release")
    finally:
        assert stop(proc) in (0, -15)
        print(daemon_log(proc))


def test_the_board_dropping_mid_session_ends_the_session_and_the_lease_and_it_serves_again(
    tracker: tuple[str, int], proxy: str, fake_lib: Path, tmp_path: Path
) -> None:
    proc, _ = start_board(tracker, proxy, fake_lib, tmp_path / "work")
    try:
        client = connect_tracker(*tracker)
        _wait_for(lambda: _device(client).get("state") == "free", "registration")
        model = tmp_path / "id.bin"
        write_graph(model, [Tensor(8, "int8")], [Tensor(8, "int8")])
        lease = client.request("demo", wait_for_board=True, wait=WAIT)
        loaded = lease.load_model(str(model))
        (y,) = loaded.run(np.ones(8, dtype=np.int8))
        assert y.tolist() == [1] * 8
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT)
        with pytest.raises(SessionEnded, match="connection to the board at .* was lost"):
            loaded.run(np.ones(8, dtype=np.int8))
        # the tracker knows: the device is offline; its lease waits for the board (which
        # might come back serving it) until the holder lets it go or its deadline passes
        _wait_for(lambda: _device(client).get("state") == "offline", "device offline")
        assert _device(client).get("lease") == lease.id
        lease.release()
        _wait_for(lambda: not _device(client).get("holder"), "the released lease to go")
        # the board comes back (same device), registers through the proxy and serves
        proc, _ = start_board(tracker, proxy, fake_lib, tmp_path / "work")
        _wait_for(lambda: _device(client).get("state") == "free", "re-registration")
        with client.request("demo", wait_for_board=True, wait=WAIT) as again:
            (y,) = again.load_model(str(model)).run(np.full(8, 5, dtype=np.int8))
            assert y.tolist() == [5] * 8
    finally:
        stop(proc)
        print(daemon_log(proc))


def test_the_proxy_checks_a_ticket_with_the_tracker_before_the_board_hears_of_it(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    """A caller without a good ticket cannot make the proxy relay to a board: the tracker
    refuses the ticket and the proxy never asks the board to connect back; a granted
    ticket still opens its session through the proxy."""
    proxy_proc, port = start_twistd("compass-proxy", "--tracker", f"{tracker[0]}:{tracker[1]}")
    proxy = f"127.0.0.1:{port}"
    proc, _ = start_board(tracker, proxy, fake_lib, tmp_path / "work")
    try:
        client = connect_tracker(*tracker)
        _wait_for(lambda: _device(client).get("state") == "free", "registration")
        for forged in ("forged-ticket", "x" * 43):
            with pytest.raises(TicketRejected, match="not valid"):
                connect_session(proxy, forged, device="board-1")
        _wait_for(lambda: daemon_log(proxy_proc).count("was not asked to connect back") >= 2,
                  "the proxy's refusals")
        assert "asking board board-1 to connect back" not in daemon_log(proxy_proc)
        with client.request("demo", wait=WAIT) as lease:
            session = lease.open_session()
            assert session.listdir() == []
            session.close()
        assert "asking board board-1 to connect back" in daemon_log(proxy_proc)
    finally:
        assert stop(proc) in (0, -15)
        print(daemon_log(proc))
        assert stop(proxy_proc) in (0, -15)
        print(daemon_log(proxy_proc))
