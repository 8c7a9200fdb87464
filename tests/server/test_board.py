"""compass-server as a whole, beyond the happy paths of test_end_to_end.py: the tracker
going away and coming back, an admin kick, a client that vanishes mid-upload, stale
directories from an earlier run, an unhealthy board, and the command line.

Real daemons on 127.0.0.1, stopped by PID; every wait polls with a deadline.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compassd.client import WaitTimeout, connect_tracker
from compassd.protocol.errors import SessionEnded
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import (
    ROOT,
    daemon_env,
    daemon_log,
    free_port,
    start_twistd,
    stop,
    until,
    wait_logged,
)

pytestmark = pytest.mark.slow

WAIT = 30.0
_TWISTD = "from twisted.scripts.twistd import run; run()"


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


def start_server(tracker: str, fake_lib: Path, workdir: Path, device: str = "life-1",
                 *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    return start_twistd(
        "compass-server", "--key", "demo", "--tracker", tracker, "--backend", "aipu",
        "--driver", str(fake_lib), "--workdir", str(workdir), "--device", device, *extra)


def finish(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    status = stop(proc)
    print(daemon_log(proc))
    assert status in (0, -15), "compass-server did not stop cleanly"
    assert "Traceback" not in daemon_log(proc)
    assert not list(workdir.glob("session-*")), "a session directory was left behind"


def device_row(client: Any, name: str = "life-1") -> dict[str, Any] | None:
    return {d["name"]: d for d in client.summary()["devices"]}.get(name)


def state_is(client: Any, state: str, name: str = "life-1") -> Callable[[], bool]:
    def check() -> bool:
        row = device_row(client, name)
        return row is not None and row["state"] == state
    return check


@pytest.fixture
def board(tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
          ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    workdir = tmp_path / "work"
    proc, _ = start_server(f"{tracker[0]}:{tracker[1]}", fake_lib, workdir)
    try:
        yield proc, workdir
    finally:
        finish(proc, workdir)


def test_the_board_registers_again_with_a_tracker_restarted_on_the_same_port(
    fake_lib: Path, tmp_path: Path
) -> None:
    port = free_port()
    listen = ("--listen", f"tcp:{port}:interface=127.0.0.1")
    first, _ = start_twistd("compass-tracker", *listen)
    wait_logged(first, f"listening on tcp 127.0.0.1:{port}")
    second = None
    workdir = tmp_path / "work"
    server, _ = start_server(f"127.0.0.1:{port}", fake_lib, workdir)
    try:
        with connect_tracker("127.0.0.1", port) as client:
            until("the board's first registration", state_is(client, "free"))
        stop(first)
        second, _ = start_twistd("compass-tracker", *listen)
        wait_logged(second, f"listening on tcp 127.0.0.1:{port}")
        with connect_tracker("127.0.0.1", port) as client:
            # the new tracker knows nothing of the board until it registers again
            until("the board's registration with the new tracker",
                  state_is(client, "free"))
            model = tmp_path / "id.bin"
            write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")])
            with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
                (y,) = lease.load_model(str(model)).run(np.full(4, 5, dtype=np.int8))
                assert y.tolist() == [5] * 4
            until("the board to be free again", state_is(client, "free"))
        assert daemon_log(server).count("registered life-1 in pool demo") >= 2
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
                print(daemon_log(proc))
        finish(server, workdir)


def test_an_admin_kick_ends_the_session_and_the_next_call_names_the_reason(
    tracker: tuple[str, int], board: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")])
    client = connect_tracker(*tracker)
    lease = client.request("demo", wait_for_board=True, wait=WAIT)
    try:
        loaded = lease.load_model(str(model))
        loaded.run(np.zeros(4, dtype=np.int8))
        client.kick(lease.id, "maintenance window")
        end = time.monotonic() + WAIT
        while True:
            # the kick reaches the board through the tracker; the first call after it
            # arrives is refused, naming why
            try:
                loaded.run(np.zeros(4, dtype=np.int8))
            except SessionEnded as e:
                assert "maintenance window" in str(e) or "kick" in str(e).lower(), str(e)
                break
            assert time.monotonic() < end, "the kicked session went on"
        with pytest.raises(SessionEnded):
            lease.listdir()
    finally:
        try:
            lease.release()
        except Exception:
            pass
    until("the board to be free again", state_is(client, "free"))
    assert not list(board[1].glob("session-*"))


def test_a_client_that_vanishes_mid_upload_leaves_nothing_and_the_board_is_free(
    tracker: tuple[str, int], board: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    from compassd.client import _reactor
    from compassd.protocol import session as sp

    client = connect_tracker(*tracker)
    lease = client.request("demo", wait_for_board=True, wait=WAIT)
    session = lease.open_session()
    workdir = board[1]
    sessions = list(workdir.glob("session-*"))
    assert len(sessions) == 1
    protocol = session._session._protocol
    size = 8 << 20
    payload = b"\x01" * (1 << 20)

    def start_upload() -> None:
        d = protocol.callRemote(sp.Upload, path="big.bin", size=size,
                                sha256=hashlib.sha256(b"\x01" * size).hexdigest())
        d.addErrback(lambda _: None)
        protocol.transport.write(payload)  # one MiB of eight, then the client is gone

    _reactor.call(start_upload)
    until("the partial upload to reach the board",
          lambda: any(p.stat().st_size for p in sessions[0].rglob("*") if p.is_file()))
    _reactor.call(lambda: protocol.transport.abortConnection())
    until("the board to drop the vanished client's session",
          lambda: not sessions[0].exists())
    until("the board to be free again", state_is(client, "free"))
    assert not list(workdir.glob("session-*"))
    # the lease is over with its session; the next client gets the board
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")])
    with client.request("demo", wait_for_board=True, wait=WAIT) as next_lease:
        (y,) = next_lease.load_model(str(model)).run(np.full(4, 2, dtype=np.int8))
        assert y.tolist() == [2] * 4


def test_stale_session_directories_of_an_earlier_run_are_removed_at_start(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    stale = workdir / "session-0123456789abcdef"
    (stale / "files").mkdir(parents=True)
    (stale / "files" / "model.bin").write_bytes(b"left over")
    keep = workdir / "notes.txt"
    keep.write_text("not a session")
    proc, _ = start_server(f"{tracker[0]}:{tracker[1]}", fake_lib, workdir)
    try:
        assert not stale.exists()
        assert keep.read_text() == "not a session"
        until("the removal to be logged",
              lambda: "session-0123456789abcdef" in daemon_log(proc))
    finally:
        finish(proc, workdir)


def test_a_tracker_given_as_a_positional_endpoint_string_is_registered_with(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    proc, _ = start_server(f"tcp:{tracker[0]}:{tracker[1]}", fake_lib, workdir, "pos-1")
    try:
        client = connect_tracker(*tracker)
        row = until("the board to register", lambda: device_row(client, "pos-1"))
        assert row["key"] == "demo"
        assert f"registering pos-1 with the tracker at tcp:{tracker[0]}:{tracker[1]}" \
            in daemon_log(proc)
    finally:
        finish(proc, workdir)


def test_a_board_without_its_device_is_quarantined_and_never_granted(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_NO_DEVICE", "1")  # the server's executors see no /dev/aipu
    workdir = tmp_path / "work"
    proc, _ = start_server(f"{tracker[0]}:{tracker[1]}", fake_lib, workdir, "sick-1",
                           "--health-interval", "0.5")
    try:
        client = connect_tracker(*tracker)
        row = until("the sick board to register", lambda: device_row(client, "sick-1"))
        row = until("the board to report itself unhealthy",
                    lambda: (lambda r: r if r and r["health"] != "ok" else None)(
                        device_row(client, "sick-1")))
        assert row["state"] != "free", row
        with pytest.raises(WaitTimeout):
            client.request("demo", wait=1.5)
        assert device_row(client, "sick-1")["health"] != "ok"  # type: ignore[index]
    finally:
        finish(proc, workdir)


# --- the command line ------------------------------------------------------------------


def _server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "compass-server", *args],
        cwd=str(ROOT), env=daemon_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60)


def test_help_explains_every_option() -> None:
    from compassd.server.tap import Options

    result = _server_cli("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for name, *_rest in Options.optParameters:
        assert f"--{name}" in text, f"--help does not mention --{name}"
    for name in ("--listen", "--tag"):
        assert name in text
    assert "libaipudrv.so" in text and "onnx" in text


@pytest.mark.parametrize(("args", "message"), [
    (("--backend", "aipu"), "--key is required"),
    (("--key", "demo", "--backend", "tpu"), "--backend must be one of aipu, onnx"),
])
def test_bad_options_are_one_line_usage_errors(args: tuple[str, ...], message: str) -> None:
    result = _server_cli(*args)
    import twisted

    if int(twisted.__version__.split(".")[0]) >= 23:  # twistd 22.4 exits 0 on usage errors
        assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1, output
