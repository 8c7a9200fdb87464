"""A real tracker, a real compass-server with real executor processes, and the client.

The NPU backend goes through the real C extension and the fake libaipudrv.so; the ONNX
one through ONNX Runtime (skipped when it is not installed). Every daemon is stopped by
its PID; every wait has a deadline (the client's own timeouts).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compassd.client import connect_tracker
from compassd.protocol.errors import (
    ExecutorDied,
    ModelRejected,
    PathRefused,
    RunFailed,
    SessionEnded,
    TensorMismatch,
)
from compassd.protocol.session import FEATURE_CACHE, FEATURE_DIGEST_AFTER
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, start_twistd, stop

WAIT = 30.0


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@pytest.fixture
def board(tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
          ) -> Iterator[tuple[str, Path]]:
    """A compass-server in pool "demo" with the aipu backend on the fake driver."""
    workdir = tmp_path / "work"
    proc, port = start_twistd(
        "compass-server", "--key", "demo", "--tracker", f"{tracker[0]}:{tracker[1]}",
        "--backend", "aipu", "--driver", str(fake_lib), "--workdir", str(workdir),
        "--device", "board-1", "--health-interval", "5")
    try:
        yield f"127.0.0.1:{port}", workdir
    finally:
        status = stop(proc)
        print(daemon_log(proc))
        assert status in (0, -15), "compass-server did not stop cleanly"
        assert "Traceback" not in daemon_log(proc)
    assert not list(workdir.glob("session-*")), "a session directory was left behind"


def _device(client, name: str = "board-1") -> dict:
    return {d["name"]: d for d in client.summary()["devices"]}[name]


def _wait_free(client, name: str = "board-1") -> None:
    """Wait (up to WAIT) until the tracker shows C{name} free: a device whose session
    ended is free only once its board confirms, which can come after the release."""
    end = time.monotonic() + WAIT
    while (state := _device(client, name)["state"]) != "free":
        assert time.monotonic() < end, f"{name} was still {state} {WAIT:g} s after its session"
        time.sleep(0.05)


def test_request_load_run_release_on_the_npu_backend(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "add3.bin"
    write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                value=3)
    client = connect_tracker(*tracker)
    with client.request("demo", wait_for_board=True, wait=WAIT) as session:
        loaded = session.load_model(str(model))
        x = np.arange(16, dtype=np.int8)
        (y,) = loaded.run(x)
        assert y.dtype == np.int8 and y.tolist() == (x + 3).tolist()
        (y,) = loaded.run({loaded.inputs[0].name: x})
        assert y.tolist() == (x + 3).tolist()
        times = loaded.benchmark(x, number=3, repeat=2)
        assert len(times) == 2 and all(t >= 0 for t in times)
        assert [f.name for f in session.listdir()] == ["add3.bin"]
        assert _device(client)["state"] == "busy"
    _wait_free(client)


def test_bad_inputs_paths_and_models_are_clear_errors_and_the_session_goes_on(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(8, "int8")], [Tensor(8, "int8")])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a graph")
    client = connect_tracker(*tracker)
    with client.request("demo", wait_for_board=True, wait=WAIT) as session:
        loaded = session.load_model(str(model))
        with pytest.raises(TensorMismatch, match="int8"):
            loaded.run(np.zeros(8, dtype=np.float32))
        with pytest.raises(TensorMismatch):
            loaded.run(np.zeros(9, dtype=np.int8))
        with pytest.raises(PathRefused):
            session.download("../../etc/passwd")
        with pytest.raises(ModelRejected):
            session.load_model(str(junk))
        (y,) = loaded.run(np.ones(8, dtype=np.int8))
        assert y.tolist() == [1] * 8
    _wait_free(client)


def test_a_crashing_model_ends_the_session_with_the_signal_and_frees_the_board(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "boom.bin"
    write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")], behaviour="crash")
    client = connect_tracker(*tracker)
    with client.request("demo", wait_for_board=True, wait=WAIT) as session:
        loaded = session.load_model(str(model))
        with pytest.raises(ExecutorDied, match="signal 11"):
            loaded.run(np.zeros(4, dtype=np.int8))
        with pytest.raises(SessionEnded):
            loaded.run(np.zeros(4, dtype=np.int8))
    # the board is free again and serves the next session
    good = tmp_path / "id.bin"
    write_graph(good, [Tensor(4, "int8")], [Tensor(4, "int8")])
    with client.request("demo", wait_for_board=True, wait=WAIT) as session:
        (y,) = session.load_model(str(good)).run(np.full(4, 7, dtype=np.int8))
        assert y.tolist() == [7] * 4
    _wait_free(client)


def test_a_run_past_its_timeout_kills_the_executor_and_frees_the_board(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "hang.bin"
    write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")], behaviour="hang")
    client = connect_tracker(*tracker)
    with client.request("demo", wait_for_board=True, wait=WAIT) as session:
        loaded = session.load_model(str(model))
        with pytest.raises((ExecutorDied, RunFailed), match="longer than"):
            loaded.run(np.zeros(4, dtype=np.int8), timeout=0.5)
    _wait_free(client)
    # free on the board too: the next session opens there and runs
    good = tmp_path / "id.bin"
    write_graph(good, [Tensor(4, "int8")], [Tensor(4, "int8")])
    with client.request("demo", wait_for_board=True, wait=WAIT) as session:
        (y,) = session.load_model(str(good)).run(np.full(4, 3, dtype=np.int8))
        assert y.tolist() == [3] * 4


def test_the_lease_deadline_ends_the_session_with_lease_expired(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "id.bin"
    write_graph(model, [Tensor(4, "int8")], [Tensor(4, "int8")])
    client = connect_tracker(*tracker)
    lease = client.request("demo", wait_for_board=True, wait=WAIT, lease=1.5)
    try:
        loaded = lease.load_model(str(model))
        session = lease.open_session()
        deadline = session.expires_in + 10.0
        # the board tells the session it ends; a run after that is refused clearly
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                loaded.run(np.zeros(4, dtype=np.int8))
            except SessionEnded as e:
                assert "expire" in str(e)
                break
        else:
            raise AssertionError("the session outlived its lease")
    finally:
        try:
            lease.release()
        except Exception:
            pass
    _wait_free(client)


def test_a_ticket_opens_one_session_only(
    tracker: tuple[str, int], board: tuple[str, Path]
) -> None:
    from compassd.client import connect_session
    from compassd.protocol.errors import BoardBusy, TicketRejected

    client = connect_tracker(*tracker)
    with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
        lease.open_session()
        with pytest.raises(BoardBusy, match="board-1"):
            connect_session(lease.address, lease.ticket)
        address, ticket = lease.address, lease.ticket
    with pytest.raises(TicketRejected):
        connect_session(address, ticket)
    with pytest.raises(TicketRejected):
        connect_session(address, "forged-ticket")
    _wait_free(client)


@pytest.mark.skipif(os.environ.get("COMPASS_SKIP_ONNX") == "1", reason="asked to skip")
def test_request_load_run_release_on_the_onnx_backend(
    tracker: tuple[str, int], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), str(path))
    workdir = tmp_path / "work"
    proc, port = start_twistd(
        "compass-server", "--key", "cpu", "--tracker", f"{tracker[0]}:{tracker[1]}",
        "--backend", "onnx", "--workdir", str(workdir), "--device", "cpu-1")
    try:
        client = connect_tracker(*tracker)
        with client.request("cpu", wait_for_board=True, wait=WAIT) as session:
            model = session.load_model(str(path))
            assert [(t.name, tuple(t.shape), str(t.dtype)) for t in model.inputs] == [
                ("x", (2, 3), "float32"), ("y", (2, 3), "float32")]
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            (z,) = model.run({"y": x, "x": x})
            np.testing.assert_array_equal(z, x + x)
            with pytest.raises(TensorMismatch, match="y"):
                model.run({"x": x})
        _wait_free(client, "cpu-1")
    finally:
        assert stop(proc) in (0, -15)
        print(daemon_log(proc))
    assert not list(workdir.glob("session-*"))


def test_the_same_model_in_a_new_session_comes_from_the_board_cache_not_the_wire(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "add3.bin"
    write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                value=3)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    client = connect_tracker(*tracker)
    x = np.arange(16, dtype=np.int8)
    with client.request("demo", wait_for_board=True, wait=WAIT) as held:
        session = held.open_session()
        assert FEATURE_CACHE in session.features
        # An older client never asks the cache: a plain upload, which the board keeps.
        session._session.features = frozenset()
        session.load_model(str(model))
        assert session.cached == frozenset()
    assert os.listdir(board[1] / "cache") == [digest]
    for _ in range(2):
        with client.request("demo", wait_for_board=True, wait=WAIT) as held:
            session = held.open_session()
            loaded = session.load_model(str(model))
            assert session.cached == {"add3.bin"}
            (y,) = loaded.run(x)
            assert y.tolist() == (x + 3).tolist()
            assert [f.name for f in session.listdir()] == ["add3.bin"]
    _wait_free(client)


def test_a_first_upload_is_hashed_while_it_is_sent_and_the_next_session_gets_it_cached(
    tracker: tuple[str, int], board: tuple[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from compassd.client import _transfer
    from compassd.client import session as client_session

    def never(*args: object) -> None:
        raise AssertionError("the file was hashed before it was sent")

    monkeypatch.setattr(client_session, "digest", never)
    model = tmp_path / "add5.bin"
    write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                value=5)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    client = connect_tracker(*tracker)
    x = np.arange(16, dtype=np.int8)
    with client.request("demo", wait=WAIT, wait_for_board=True) as held:
        session = held.open_session()
        assert FEATURE_DIGEST_AFTER in session.features
        loaded = session.load_model(str(model))  # streamed, its digest after the bytes
        assert session.cached == frozenset()
        (y,) = loaded.run(x)
        assert y.tolist() == (x + 5).tolist()
    # the board verified and cached it; the client remembers the digest it computed
    assert os.listdir(board[1] / "cache") == [digest]
    assert _transfer.remembered(str(model)) == (model.stat().st_size, digest)
    with client.request("demo", wait=WAIT) as held:
        session = held.open_session()
        session.load_model(str(model))
        assert session.cached == {"add5.bin"}
    _wait_free(client)  # free once the board confirms the session ended


def test_a_board_without_a_cache_says_so_and_takes_uploads_as_before(
    tracker: tuple[str, int], fake_lib: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    proc, _ = start_twistd(
        "compass-server", "--key", "plain", "--tracker", f"{tracker[0]}:{tracker[1]}",
        "--backend", "aipu", "--driver", str(fake_lib), "--workdir", str(workdir),
        "--device", "board-2", "--cache-size", "0")
    try:
        model = tmp_path / "add3.bin"
        write_graph(model, [Tensor(16, "int8")], [Tensor(16, "int8")], behaviour="add",
                    value=3)
        client = connect_tracker(*tracker)
        for _ in range(2):
            with client.request("plain", wait_for_board=True, wait=WAIT) as held:
                session = held.open_session()
                assert session.features == {FEATURE_DIGEST_AFTER}  # no model-cache-1
                loaded = session.load_model(str(model))
                assert session.cached == frozenset()
                (y,) = loaded.run(np.zeros(16, dtype=np.int8))
                assert y.tolist() == [3] * 16
        assert not (workdir / "cache").exists()
    finally:
        assert stop(proc) in (0, -15)
        assert "Traceback" not in daemon_log(proc)
