"""Attacks on a real compass-proxy over loopback while a legitimate session runs through
it: boxes that never end (before and after hello) and many source addresses that connect
and sit. The proxy's resident memory stays under a stated bound when the attack ends; the
legitimate client's run latency through the proxy is printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_tracker
from compassd.protocol import PROTOCOL_VERSION, Hello
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.fuzz._inprocess import box, endless_box
from tests.helpers import daemon_log, start_twistd, stop
from tests.server.test_attack_board import report, timed_run
from tests.tracker.test_attack_connections import attacker, closed, read_box, rss_kib

WAIT = 30.0
RSS_BOUND_KIB = 150 * 1024
"""The proxy's resident memory after the attacks. It starts near 50 MiB; without box
limits one endless box took it past 1 GB."""

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 22)]


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


def test_endless_boxes_and_silent_crowds_leave_the_proxy_bounded_and_relaying(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    try:
        socket.create_server(("127.0.0.9", 0)).close()
    except OSError:
        pytest.skip("this host cannot bind 127.0.0.9")
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(64, "int8")], [Tensor(64, "int8")])
    x = np.arange(64, dtype=np.int8)
    proxy, port = start_twistd(
        "compass-proxy", "--tracker", f"{tracker[0]}:{tracker[1]}",
        "--max-connections-per-address", "4", "--max-unauthenticated", "32",
        "--hello-timeout", "20")
    board = None
    try:
        board, _ = start_twistd(
            "compass-server", "--key", "relayed", "--tracker", "127.0.0.1:1",
            "--proxy", f"127.0.0.1:{port}", "--backend", "aipu", "--driver", str(fake_lib),
            "--workdir", str(tmp_path / "work"), "--device", "board-p")
        client = connect_tracker(*tracker)
        times: list[float] = []
        with client.request("relayed", wait=WAIT, wait_for_board=True) as session:
            loaded = session.load_model(str(model))
            before = rss_kib(proxy.pid)
            timed_run(loaded, x, times)
            stream = endless_box(60_000, keys=40)
            cut = 0
            for i in range(30):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                try:
                    if i % 2:
                        sock.sendall(box(Hello, 1, versions=[PROTOCOL_VERSION],
                                         role="client", user="mallory"))
                        read_box(sock, time.monotonic() + 10)
                    with contextlib.suppress(OSError):
                        sock.sendall(stream)
                    sock.settimeout(10)
                    with contextlib.suppress(ConnectionResetError):
                        while sock.recv(65536):
                            pass
                    cut += 1
                finally:
                    sock.close()
                timed_run(loaded, x, times)
            crowd = []
            for _ in range(4):
                for source in ADDRESSES:
                    sock = attacker(source, port)
                    sock.sendall(b"\x00\x01a\x20\x00" + b"x" * 8192)
                    crowd.append(sock)
                timed_run(loaded, x, times)
            deadline = time.monotonic() + 10
            alive = len(crowd)
            while time.monotonic() < deadline and alive > 32:
                alive = sum(not closed(sock) for sock in crowd)
            for _ in range(10):
                timed_run(loaded, x, times)
            after = rss_kib(proxy.pid)
            for sock in crowd:
                sock.close()
        print(f"\nproxy: 30 endless boxes (half after hello), {cut} cut off;"
              f" {len(crowd)} silent connections from {len(ADDRESSES)} addresses,"
              f" {alive} still open (cap 32); RSS {before} KiB before, {after} KiB after"
              f" (bound {RSS_BOUND_KIB} KiB)")
        print(report("legitimate session through the proxy during the attack", times))
        assert cut == 30
        assert alive <= 32
        assert after < RSS_BOUND_KIB
    finally:
        if board is not None:
            stop(board)
        stop(proxy)
        assert "Traceback" not in daemon_log(proxy), daemon_log(proxy)
