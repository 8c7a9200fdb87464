"""A real compass-proxy on loopback limits how often one source address may open
sessions (each open costs the tracker a check-ticket call, issue 14): past the burst, an
open from that address is refused at once with a sentence, without asking the tracker,
while other addresses are still checked and a legitimate client is still served."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from twisted.protocols import amp

from compassd.client import connect_tracker
from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol import session as ps
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.fuzz._inprocess import box
from tests.helpers import daemon_log, start_twistd, stop
from tests.tracker.test_attack_connections import attacker, read_box

WAIT = 30.0
BURST = 3


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


def bogus_open(source: str, port: int) -> amp.AmpBox:
    """Say hello as a client from C{source}, open a session on board-p with a made-up
    ticket, and return the proxy's answer."""
    sock = attacker(source, port)
    try:
        sock.sendall(box(Hello, 1, versions=[PROTOCOL_VERSION], role="client"))
        read_box(sock, time.monotonic() + WAIT)
        sock.sendall(box(ps.OpenSession, 2, ticket="f" * 64, device="board-p"))
        return read_box(sock, time.monotonic() + WAIT)
    finally:
        sock.close()


def test_one_address_past_its_burst_of_opens_is_refused_and_others_are_served(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    try:
        socket.create_server(("127.0.0.3", 0)).close()
    except OSError:
        pytest.skip("this host cannot bind 127.0.0.3")
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")])
    x = np.arange(16, dtype=np.int8)
    # a rate so low that nothing comes back during the test: only the burst counts
    proxy, port = start_twistd(
        "compass-proxy", "--tracker", f"{tracker[0]}:{tracker[1]}",
        "--session-open-rate", "0.001", "--session-open-burst", str(BURST))
    board = None
    try:
        board, _ = start_twistd(
            "compass-server", "--key", "relayed", "--tracker", "127.0.0.1:1",
            "--proxy", f"127.0.0.1:{port}", "--backend", "aipu", "--driver", str(fake_lib),
            "--workdir", str(tmp_path / "work"), "--device", "board-p")
        client = connect_tracker(*tracker)
        with client.request("relayed", wait=WAIT, wait_for_board=True) as session:
            assert (session.load_model(str(model)).run(x)[0] == x).all()

        answers = [bogus_open("127.0.0.2", port) for _ in range(BURST + 2)]
        codes = [a.get(b"_error_code") for a in answers]
        assert codes == [b"TICKET_REJECTED"] * BURST + [b"LIMIT_EXCEEDED"] * 2, answers
        said = answers[-1][b"_error_description"].decode()
        assert "refused to open a session on board board-p for 127.0.0.2" in said
        assert "Wait" in said and "open the session again" in said

        # another address is still checked with the tracker, not refused
        assert bogus_open("127.0.0.3", port)[b"_error_code"] == b"TICKET_REJECTED"
        # and the legitimate client opens its next session as before
        with client.request("relayed", wait=WAIT) as session:
            assert (session.load_model(str(model)).run(x)[0] == x).all()
        client.close()
    finally:
        if board is not None:
            stop(board)
        stop(proxy)
    log = daemon_log(proxy)
    assert log.count("refusing session opens from 127.0.0.2") == 1, log
    # the tracker was asked about the burst's tickets only: 3 from .2, 1 from .3
    checked = [line for line in log.splitlines()
               if "refused a session on board board-p" in line]
    assert sum("127.0.0.2" in line for line in checked) == BURST, checked
    assert sum("127.0.0.3" in line for line in checked) == 1, checked
    assert "Traceback" not in log
