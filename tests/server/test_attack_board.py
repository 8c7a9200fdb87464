"""Attacks on a real compass-server over loopback, with a legitimate session served
throughout: boxes that never end (before and after a token-less hello), many source
addresses that connect and sit, and a session that tries to grow its directory past its
entry and depth limits. The board's resident memory stays under a stated bound when the
attack ends; the legitimate client's run latency is printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_tracker
from compassd.protocol import PROTOCOL_VERSION, Hello
from compassd.protocol.errors import LimitExceeded, PathRefused
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.fuzz._inprocess import box, endless_box
from tests.helpers import daemon_log, start_twistd, stop
from tests.tracker.test_attack_connections import attacker, closed, read_box, rss_kib

WAIT = 30.0
RSS_BOUND_KIB = 150 * 1024
"""The board server's resident memory after the attacks. It starts near 65 MiB (Twisted,
numpy, the C binding); without box limits one endless box took it to 2 GB."""

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 22)]


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@contextlib.contextmanager
def board(tracker: tuple[str, int], fake_lib: Path, workdir: Path, *args: str
          ) -> Iterator[tuple[int, int]]:
    proc, port = start_twistd(
        "compass-server", "--key", "attacked", "--tracker", f"{tracker[0]}:{tracker[1]}",
        "--backend", "aipu", "--driver", str(fake_lib), "--workdir", str(workdir),
        "--device", "board-a", *args)
    try:
        yield proc.pid, port
    finally:
        stop(proc)
        assert "Traceback" not in daemon_log(proc), daemon_log(proc)


def report(what: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (f"{what}: {len(ms)} runs, median {statistics.median(ms):.1f} ms,"
            f" max {ms[-1]:.1f} ms")


def timed_run(loaded: object, x: np.ndarray, times: list[float]) -> None:
    started = time.monotonic()
    (y,) = loaded.run(x)  # type: ignore[attr-defined]
    times.append(time.monotonic() - started)
    assert y.tolist() == x.tolist()


def test_endless_boxes_and_silent_crowds_leave_the_board_bounded_and_serving(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    try:
        socket.create_server(("127.0.0.9", 0)).close()
    except OSError:
        pytest.skip("this host cannot bind 127.0.0.9")
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(64, "int8")], [Tensor(64, "int8")])
    x = np.arange(64, dtype=np.int8)
    with board(tracker, fake_lib, tmp_path / "work", "--max-connections-per-address", "4",
               "--max-unauthenticated", "32", "--hello-timeout", "20") as (pid, port):
        client = connect_tracker(*tracker)
        times: list[float] = []
        with client.request("attacked", wait=WAIT, wait_for_board=True) as session:
            loaded = session.load_model(str(model))
            before = rss_kib(pid)
            timed_run(loaded, x, times)
            stream = endless_box(60_000, keys=40)  # 2.4 MB in one box, if it were read
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
                    sock.sendall(b"\x00\x01a\x20\x00" + b"x" * 8192)  # half a box, held
                    crowd.append(sock)
                timed_run(loaded, x, times)
            deadline = time.monotonic() + 10
            alive = len(crowd)
            while time.monotonic() < deadline and alive > 32:
                alive = sum(not closed(sock) for sock in crowd)
            for _ in range(10):
                timed_run(loaded, x, times)
            after = rss_kib(pid)
            for sock in crowd:
                sock.close()
        print(f"\nboard: 30 endless boxes (half after hello), {cut} cut off;"
              f" {len(crowd)} silent connections from {len(ADDRESSES)} addresses,"
              f" {alive} still open (cap 32); RSS {before} KiB before, {after} KiB after"
              f" (bound {RSS_BOUND_KIB} KiB)")
        print(report("legitimate session during the attack", times))
        assert cut == 30
        assert alive <= 32
        assert after < RSS_BOUND_KIB


def test_a_session_cannot_grow_its_directory_past_its_entry_and_depth_limits(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(8, "int8")], [Tensor(8, "int8")])
    with board(tracker, fake_lib, tmp_path / "work", "--max-files", "50") as (pid, port):
        client = connect_tracker(*tracker)
        with client.request("attacked", wait=WAIT, wait_for_board=True) as session:
            stored = 0
            with pytest.raises(LimitExceeded, match="of the 50 it may"):
                for i in range(100):
                    session.upload(b"", f"d{i}/e{i}/empty")  # 3 entries each
                    stored += 1
            assert stored == 16  # 48 entries; a 17th would make 51
            with pytest.raises(PathRefused, match="folders deep"):
                session.upload(b"x", "/".join(["d"] * 40) + "/deep")
            session.remove("d0")
            session.upload(b"", "d0/e0/empty")  # room again once removed
            (y,) = session.load_model(str(model)).run(np.ones(8, dtype=np.int8))
            assert y.tolist() == [1] * 8
            names = {f.name for f in session.listdir()}
            assert names == {f"d{i}" for i in range(16)} | {"id.bin"}
