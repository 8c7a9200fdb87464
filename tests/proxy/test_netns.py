"""The full path through compass-proxy across real network separation.

The test makes three network namespaces joined by veth pairs, with private addresses
only, and no forwarding between them::

    board ns  10.77.1.2 ── 10.77.1.1  hub ns  10.77.2.1 ── 10.77.2.2  client ns
              (compass-server)        (tracker, proxy)               (the client)

The tracker listens only on the hub's loopback and its client side; the proxy on both
sides. So the board can reach only the proxy, and the client only the proxy and the
tracker. Everything is created and deleted by the test; every process is stopped by its
PID. It needs root and working ``ip netns``; otherwise it is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from compassd.tracker.access import hash_token
from tests.fakedriver.build import build_fake_driver
from tests.helpers import ROOT, DaemonFailed, daemon_env, daemon_log, stop

DEADLINE = 30.0
TRACKER_PORT = 9190
PROXY_PORT = 9090


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (run the suite as root, as CI does)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"cmp-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        return f"ip netns add failed here: {detail.decode(errors='replace').strip() or e}"
    try:
        _ip("netns", "del", probe)
    except subprocess.SubprocessError:
        pass
    return None


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    why = _can_make_namespaces()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    names = {"board": f"cmpb{tag}", "hub": f"cmph{tag}", "client": f"cmpc{tag}"}
    made: list[str] = []
    try:
        for name in names.values():
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for side, hub_ip, far_ip in (("board", "10.77.1.1", "10.77.1.2"),
                                     ("client", "10.77.2.1", "10.77.2.2")):
            hub_end, far_end = f"h{side[0]}{tag}", f"f{side[0]}{tag}"
            _ip("link", "add", hub_end, "netns", names["hub"], "type", "veth",
                "peer", "name", far_end, "netns", names[side])
            _ip("-n", names["hub"], "addr", "add", f"{hub_ip}/24", "dev", hub_end)
            _ip("-n", names[side], "addr", "add", f"{far_ip}/24", "dev", far_end)
            _ip("-n", names["hub"], "link", "set", hub_end, "up")
            _ip("-n", names[side], "link", "set", far_end, "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _start_in(ns: str, plugin: str, *args: str) -> subprocess.Popen[bytes]:
    """``twistd -n PLUGIN`` inside namespace C{ns} (``ip netns exec`` execs it, so the
    PID is the daemon's), once it has logged that it listens on its own loopback."""
    import re
    import select
    import time

    from tests.helpers import _drain

    command = ["ip", "netns", "exec", ns, sys.executable, "-c",
               "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
               "--logfile=-", plugin, "--listen", "tcp:0:interface=127.0.0.1", *args]
    proc = subprocess.Popen(command, env=daemon_env(), cwd=str(ROOT),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    log = b""
    end = time.monotonic() + DEADLINE
    try:
        while not re.search(rb"listening on tcp 127\.0\.0\.1:\d+", log):
            left = end - time.monotonic()
            if left <= 0 or proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
                raise DaemonFailed(f"{plugin} in {ns} did not start:\n{log.decode()}")
            if select.select([fd], [], [], left)[0]:
                log += os.read(fd, 65536)
        os.set_blocking(fd, True)
        _drain(proc, log)
        return proc
    except BaseException:
        stop(proc)
        raise


CLIENT = textwrap.dedent("""
    import socket, sys
    import numpy as np
    from compassd.client import connect_tracker
    from tests.fakedriver.graphs import Tensor, write_graph

    model = sys.argv[1]
    write_graph(model, [Tensor(64, "int8")], [Tensor(64, "int8")], behaviour="add", value=3)
    # the client cannot reach the board's network at all
    probe = socket.socket()
    probe.settimeout(2)
    try:
        probe.connect(("10.77.1.2", 9091))
        print("REACHED-BOARD")
    except OSError as e:
        print("board unreachable:", e)
    client = connect_tracker("10.77.2.1", 9190, sys.argv[2])
    with client.request("demo", wait_for_board=True, wait=30) as lease:
        print("ADDRESS", lease.address)
        (y,) = lease.load_model(model).run(np.arange(64, dtype=np.int8))
        assert y.tolist() == [i + 3 for i in range(64)], y
        print("RUN-OK")
    import time
    end = time.monotonic() + 10
    state = None
    while time.monotonic() < end and state != "free":
        state = {d["name"]: d["state"] for d in client.summary()["devices"]}.get("board-1")
        time.sleep(0.05)
    print("STATE", state)
""")

BOARD_PROBE = textwrap.dedent("""
    import socket
    for host, port in (("10.77.2.1", 9190), ("10.77.1.1", 9190), ("10.77.2.2", 9090)):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, port))
            print("REACHED", host, port)
        except OSError:
            print("unreachable", host, port)
""")


def test_a_board_that_reaches_only_the_proxy_serves_a_client_that_never_reaches_it(
    namespaces: dict[str, str], tmp_path: Path
) -> None:
    fake_lib = build_fake_driver()
    # the tracker and the proxy listen beyond loopback, so they need tokens: one for the
    # board, one for the client (the proxy checks the same file)
    tokens, board_token = tmp_path / "tokens", tmp_path / "board.token"
    tokens.write_text(f"{hash_token('board-secret')} user=rack roles=board\n"
                      f"{hash_token('client-secret')} user=ann roles=client\n")
    board_token.write_text("board-secret\n")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_start_in(
            namespaces["hub"], "compass-tracker", "--tokens", str(tokens),
            "--listen", f"tcp:{TRACKER_PORT}:interface=10.77.2.1",
            "--listen", f"tcp:{TRACKER_PORT}:interface=127.0.0.1"))
        procs.append(_start_in(
            namespaces["hub"], "compass-proxy", "--tracker", f"127.0.0.1:{TRACKER_PORT}",
            "--tokens", str(tokens),
            "--listen", f"tcp:{PROXY_PORT}:interface=10.77.1.1",
            "--listen", f"tcp:{PROXY_PORT}:interface=10.77.2.1",
            "--advertise", f"10.77.2.1:{PROXY_PORT}"))
        procs.append(_start_in(
            namespaces["board"], "compass-server", "--key", "demo",
            "--tracker", f"10.77.2.1:{TRACKER_PORT}", "--proxy", f"10.77.1.1:{PROXY_PORT}",
            "--backend", "aipu", "--driver", str(fake_lib), "--device", "board-1",
            "--token-file", str(board_token),
            "--workdir", str(tmp_path / "work")))
        probe = subprocess.run(["ip", "netns", "exec", namespaces["board"], sys.executable,
                                "-c", BOARD_PROBE], capture_output=True, timeout=DEADLINE)
        assert b"REACHED" not in probe.stdout, probe.stdout.decode()
        client = subprocess.run(
            ["ip", "netns", "exec", namespaces["client"], sys.executable, "-c", CLIENT,
             str(tmp_path / "add3.bin"), "client-secret"],
            capture_output=True, timeout=DEADLINE * 2, env=daemon_env(),
            cwd=str(Path(__file__).resolve().parents[2]))
        out = client.stdout.decode() + client.stderr.decode()
        assert client.returncode == 0, out
        assert "REACHED-BOARD" not in out
        assert f"ADDRESS 10.77.2.1:{PROXY_PORT}" in out
        assert "RUN-OK" in out
        assert "STATE free" in out
    finally:
        for proc in reversed(procs):
            stop(proc)
            print(daemon_log(proc))
