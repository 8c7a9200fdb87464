"""Real executor processes driven through ExecutorHandle (the board server's side).

Each test has a deadline (every Deferred waited on gets a timeout) and kills the processes
it started by PID at the end.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from compassd.executor.arena import Arena, Slot
from compassd.executor.handle import ExecutorHandle, ExecutorPool, spawn_executor
from compassd.protocol.errors import (
    ExecutorDied,
    LimitExceeded,
    ModelRejected,
    RunFailed,
    TensorMismatch,
)
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph

DEADLINE = 60.0
ARENA = 1 << 20


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FAKE_AIPU_")}


@pytest.fixture
def started() -> Iterator[list[ExecutorHandle]]:
    handles: list[ExecutorHandle] = []
    yield handles
    for h in handles:
        if h.pid is not None and h.alive:
            try:
                os.kill(h.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def wait(d: Any, seconds: float = DEADLINE) -> Any:
    return d.addTimeout(seconds, reactor)


def spawn(
    started: list[ExecutorHandle], fake_lib: Path, env: dict[str, str], **kw: Any
) -> ExecutorHandle:
    h = spawn_executor(reactor, "aipu", str(fake_lib), tag=kw.pop("tag", "s1"), env=env, **kw)
    started.append(h)
    return h


@pytest_twisted.inlineCallbacks
def attached(h: ExecutorHandle, workdir: Path) -> Any:
    arena = Arena.create(workdir / "arena", ARENA)
    yield wait(h.ready)
    yield wait(h.attach(str(workdir), "arena", ARENA, "s1"))
    return arena


def i8(n: int) -> Tensor:
    return Tensor(n, "int8")


@pytest_twisted.inlineCallbacks
def test_identity_and_add_models_return_correct_outputs_through_the_arena(
    tmp_path: Path, fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    write_graph(tmp_path / "id.bin", [i8(16)], [i8(16)])
    write_graph(
        tmp_path / "add.bin",
        [Tensor(16, "float32")],
        [Tensor(16, "float32")],
        behaviour="add",
        value=3,
    )
    (tmp_path / "add.json").write_text(
        '{"inputs": [{"name": "x", "dtype": "float32", "shape": [2, 2]}],'
        ' "outputs": [{"name": "y", "dtype": "float32", "shape": [2, 2]}]}'
    )
    h = spawn(started, fake_lib, env)
    info = yield wait(h.ready)
    assert any(line.startswith("target=") for line in info)
    arena = yield attached(h, tmp_path)

    model, inputs, outputs = yield wait(h.load("id.bin"))
    assert model == "id.bin"
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [("input0", "int8", (16,))]
    x = np.arange(16, dtype=np.int8)
    slot = arena.put("input0", x)
    outs, seconds = yield wait(h.execute("id.bin", [slot], 4096, 4096))
    assert seconds >= 0
    np.testing.assert_array_equal(arena.read(outs[0]), x)

    model, inputs, outputs = yield wait(h.load("add.bin"))
    assert [(s.name, s.shape) for s in inputs] == [("x", (2, 2))]
    a = np.array([[1.5, 2], [3, 4]], dtype=np.float32)
    outs, _ = yield wait(h.execute("add.bin", [arena.put("x", a)], 8192, 4096))
    assert outs[0].name == "y" and outs[0].offset % 64 == 0
    np.testing.assert_array_equal(arena.read(outs[0]), a + 3)

    times = yield wait(h.measure("add.bin", [arena.put("x", a)], number=3, repeat=2, warmup=1))
    assert len(times) == 2 and all(t > 0 for t in times)
    healthy, detail = yield wait(h.check_health())
    assert healthy, detail
    h.kill()
    yield wait(h.ended)


@pytest_twisted.inlineCallbacks
def test_wrong_shape_is_a_tensor_mismatch_and_the_executor_stays_usable(
    tmp_path: Path, fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    write_graph(tmp_path / "id.bin", [i8(16)], [i8(16)])
    h = spawn(started, fake_lib, env)
    arena = yield attached(h, tmp_path)
    yield wait(h.load("id.bin"))
    bad = arena.put("input0", np.zeros((4, 4), np.int8))
    with pytest.raises(TensorMismatch, match=r"'input0'.*int8 with shape \(16,\)"):
        yield wait(h.execute("id.bin", [bad], 4096, 4096))
    wrong_name = arena.put("nope", np.zeros(16, np.int8))
    with pytest.raises(TensorMismatch, match="no input named 'nope'"):
        yield wait(h.execute("id.bin", [wrong_name], 4096, 4096))
    with pytest.raises(LimitExceeded, match="outputs do not fit"):
        yield wait(h.execute("id.bin", [arena.put("input0", np.ones(16, np.int8))], 8192, 8))
    outs, _ = yield wait(h.execute("id.bin", [arena.put("input0", np.ones(16, np.int8))], 8192, 64))
    np.testing.assert_array_equal(arena.read(outs[0]), np.ones(16, np.int8))
    h.kill()
    yield wait(h.ended)


@pytest_twisted.inlineCallbacks
def test_crash_graph_fails_the_call_with_executor_died_naming_signal_11_and_the_model(
    tmp_path: Path, fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    write_graph(tmp_path / "boom.bin", [i8(4)], [i8(4)], behaviour="crash")
    h = spawn(started, fake_lib, env)
    arena = yield attached(h, tmp_path)
    yield wait(h.load("boom.bin"))
    with pytest.raises(ExecutorDied) as caught:
        yield wait(h.execute("boom.bin", [arena.put("input0", np.zeros(4, np.int8))], 4096, 64))
    assert "died with signal 11" in str(caught.value)
    assert "while running model boom.bin" in str(caught.value)
    why = yield wait(h.ended)
    assert "signal 11" in why and not h.alive
    with pytest.raises(ExecutorDied):
        yield wait(h.check_health())


@pytest_twisted.inlineCallbacks
def test_hang_with_a_driver_timeout_answers_run_failed_and_the_executor_exits(
    tmp_path: Path, fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    write_graph(tmp_path / "hang.bin", [i8(4)], [i8(4)], behaviour="hang")
    h = spawn(started, fake_lib, env, job_timeout_ms=200)
    arena = yield attached(h, tmp_path)
    yield wait(h.load("hang.bin"))
    with pytest.raises(RunFailed, match="did not finish within 200 ms.*must be restarted"):
        yield wait(h.execute("hang.bin", [arena.put("input0", np.zeros(4, np.int8))], 4096, 64))
    why = yield wait(h.ended)
    assert "exited with status 3 to be recycled" in why


@pytest_twisted.inlineCallbacks
def test_hang_past_the_call_timeout_kills_the_executor_with_a_clear_error(
    tmp_path: Path, fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    write_graph(tmp_path / "hang.bin", [i8(4)], [i8(4)], behaviour="hang")
    h = spawn(started, fake_lib, env, job_timeout_ms=0)
    arena = yield attached(h, tmp_path)
    yield wait(h.load("hang.bin"))
    with pytest.raises(ExecutorDied) as caught:
        yield wait(
            h.execute(
                "hang.bin", [arena.put("input0", np.zeros(4, np.int8))], 4096, 64, timeout=0.5
            )
        )
    text = str(caught.value)
    assert "signal 9" in text and "longer than 0.5 s while running model hang.bin" in text
    assert not h.alive


@pytest_twisted.inlineCallbacks
def test_driver_stdout_goes_to_the_tagged_log_not_the_amp_channel(
    tmp_path: Path,
    fake_lib: Path,
    env: dict[str, str],
    started: list[ExecutorHandle],
    log_lines: list[dict[str, Any]],
) -> Any:
    (tmp_path / "junk.bin").write_bytes(b"this is not an aipu graph at all")
    write_graph(tmp_path / "id.bin", [i8(4)], [i8(4)])
    h = spawn(started, fake_lib, env, tag="session-42")
    yield attached(h, tmp_path)
    with pytest.raises(ModelRejected, match="junk.bin"):
        yield wait(h.load("junk.bin"))
    model, _, _ = yield wait(h.load("id.bin"))  # the channel is still in step
    assert model == "id.bin"
    umd = [e for e in log_lines if "[UMD" in e.get("executor_line", "")]
    assert umd, "the driver's error line should be logged"
    assert all(e["executor_tag"] == "session-42" and e["executor_stream"] == 1 for e in umd)
    h.kill()
    yield wait(h.ended)


@pytest_twisted.inlineCallbacks
def test_kill_stops_the_process_by_pid(
    fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    h = spawn(started, fake_lib, env)
    yield wait(h.ready)
    pid = h.pid
    assert pid is not None
    h.kill()
    why = yield wait(h.ended)
    assert "signal 9" in why
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest_twisted.inlineCallbacks
def test_closing_the_channel_makes_the_executor_exit_cleanly(
    fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    h = spawn(started, fake_lib, env)
    yield wait(h.ready)
    why = yield wait(h.stop())
    assert why == "the executor exited with status 0"


@pytest_twisted.inlineCallbacks
def test_pool_hands_out_the_warm_spare_and_starts_another(
    fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    def spawn_tagged(tag: str) -> ExecutorHandle:
        return spawn(started, fake_lib, env, tag=tag)

    pool = ExecutorPool(reactor, "aipu", spawn=spawn_tagged)
    pool.start()
    first = pool.spare
    assert first is not None
    yield wait(first.when_ready())
    got = yield wait(pool.take("session-1"))
    assert got is first and got.tag == "session-1"
    assert pool.spare is not None and pool.spare is not first
    second = pool.spare
    yield wait(pool.stop())
    assert not second.alive
    got.kill()
    yield wait(got.ended)


@pytest_twisted.inlineCallbacks
def test_onnx_executor_reports_ready_and_healthy(
    env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    pytest.importorskip("onnxruntime")
    h = spawn_executor(reactor, "onnx", tag="cpu", env=env)
    started.append(h)
    info = yield wait(h.ready)
    assert any(line.startswith("onnxruntime=") for line in info)
    healthy, detail = yield wait(h.check_health())
    assert healthy, detail
    h.kill()
    yield wait(h.ended)


def test_loading_before_attach_is_refused_with_a_sentence(tmp_path: Path) -> None:
    from compassd.executor.__main__ import ExecutorServer
    from compassd.protocol.errors import BadRequest

    class Dummy:
        name = "dummy"

    server = ExecutorServer(Dummy(), lambda code: None)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="Attach the executor"):
        server._inside("m.bin", "model")
    assert isinstance(Slot("x", "int8", [1], 0, 1), Slot)


@pytest_twisted.inlineCallbacks
def test_an_executor_started_beside_another_compassd_runs_its_servers_code(
    tmp_path: Path, fake_lib: Path, env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    """A server started in a source tree (here a decoy one that refuses to be imported)
    still gets an executor made of its own compassd, not the current directory's."""
    decoy = tmp_path / "compassd"
    (decoy / "executor").mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy compassd was imported')\n")
    (decoy / "executor" / "__init__.py").write_text("")
    (decoy / "executor" / "__main__.py").write_text("")
    env = {k: v for k, v in env.items() if k != "PYTHONSAFEPATH"}
    h = spawn(started, fake_lib, env, path=str(tmp_path))
    info = yield wait(h.ready)
    assert any(line.startswith("target=") for line in info), info
    h.kill()
    yield wait(h.ended)


@pytest_twisted.inlineCallbacks
def test_an_executor_that_cannot_start_says_why(
    env: dict[str, str], started: list[ExecutorHandle]
) -> Any:
    h = spawn_executor(reactor, "nosuch", tag="broken", env=env)
    started.append(h)
    with pytest.raises(ExecutorDied) as caught:
        yield wait(h.ready)
    message = str(caught.value)
    assert message.startswith("The executor exited with status 2 before it was ready;")
    assert "its last words:" in message and "invalid choice: 'nosuch'" in message
