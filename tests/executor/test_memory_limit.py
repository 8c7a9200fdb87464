"""An executor runs under a memory limit (RLIMIT_AS): a model that asks for more fails
with a sentence naming the limit, and the executor goes on serving the session.

A real executor process with ONNX Runtime (skipped where it is not installed), and a
ConstantOfShape model whose output size is its input: the issue's 4 GB allocation.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from compassd.executor.__main__ import out_of_memory
from compassd.executor.arena import Arena
from compassd.executor.handle import ExecutorHandle, executor_argv, spawn_executor
from compassd.protocol.errors import LimitExceeded
from compassd.server.tap import MIN_EXECUTOR_MEMORY, Options, default_executor_memory

DEADLINE = 60.0
ARENA = 1 << 20
LIMIT = 1536 << 20
"""The executor's address space here: ONNX Runtime loaded needs a few hundred MiB."""


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


def wait(d: Any, seconds: float = DEADLINE) -> Any:
    return d.addTimeout(seconds, reactor)


def constant_of_shape(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("ConstantOfShape", ["shape"], ["out"],
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph(
        [node], "grow", [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest_twisted.inlineCallbacks
def test_a_model_past_the_memory_limit_fails_with_a_sentence_and_the_executor_goes_on(
    tmp_path: Path, started: list[ExecutorHandle]
) -> Any:
    pytest.importorskip("onnxruntime")
    constant_of_shape(tmp_path / "grow.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_AIPU_")}
    h = spawn_executor(reactor, "onnx", tag="limited", env=env, memory_limit=LIMIT)
    started.append(h)
    yield wait(h.ready)
    with open(f"/proc/{h.pid}/limits") as limits:
        line = next(row for row in limits if row.startswith("Max address space"))
    assert line.split()[3] == str(LIMIT)
    arena = Arena.create(tmp_path / "arena", ARENA)
    yield wait(h.attach(str(tmp_path), "arena", ARENA, "s1"))
    yield wait(h.load("grow.onnx"))
    small = arena.put("shape", np.array([1000], dtype=np.int64))
    outs, _ = yield wait(h.execute("grow.onnx", [small], 4096, ARENA - 4096))
    assert arena.read(outs[0]).shape == (1000,)
    huge = arena.put("shape", np.array([1_000_000_000], dtype=np.int64))  # 4 GB
    with pytest.raises(LimitExceeded) as caught:
        yield wait(h.execute("grow.onnx", [huge], 4096, ARENA - 4096))
    message = str(caught.value)
    assert "needed more memory than the 1.5 GiB of address space" in message
    assert "--executor-memory" in message
    assert h.alive
    outs, _ = yield wait(h.execute("grow.onnx", [small], 4096, ARENA - 4096))
    assert arena.read(outs[0]).tolist() == [1.0] * 1000
    h.kill()
    yield wait(h.ended)


def test_the_executor_sets_its_own_address_space_limit_at_start() -> None:
    code = ("import resource, sys; from compassd.executor.__main__ import limit_memory;"
            " print(limit_memory(int(sys.argv[1])),"
            " resource.getrlimit(resource.RLIMIT_AS)[0])")
    out = subprocess.run([sys.executable, "-c", code, str(3 << 30)], capture_output=True,
                         text=True, timeout=DEADLINE, check=True).stdout.split()
    assert out == [str(3 << 30)] * 2
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    assert soft == resource.RLIM_INFINITY or soft > 0  # this process was not touched


def test_the_board_asks_for_its_limit_plus_the_arena() -> None:
    argv = executor_argv("onnx", memory_limit=5 << 30)
    assert argv[argv.index("--memory-limit") + 1] == str(5 << 30)
    assert "--memory-limit" not in executor_argv("onnx")


def test_executor_memory_option_defaults_to_half_the_machine_and_0_turns_it_off() -> None:
    options = Options()
    options.parseOptions(["--key", "npu"])
    assert options["executor-memory"] == default_executor_memory()
    assert default_executor_memory() >= MIN_EXECUTOR_MEMORY
    pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_executor_memory() in (MIN_EXECUTOR_MEMORY, pages // 2) or \
        abs(default_executor_memory() - pages // 2) < (64 << 20)
    options = Options()
    options.parseOptions(["--key", "npu", "--executor-memory", "3G"])
    assert options["executor-memory"] == 3 << 30
    options = Options()
    options.parseOptions(["--key", "npu", "--executor-memory", "0"])
    assert options["executor-memory"] is None


@pytest.mark.parametrize("message, ran_out", [
    ("Failed to allocate memory for requested buffer of size 4000000000", True),
    ("std::bad_alloc", True),
    ("Unable to allocate 3.73 GiB for an array", True),
    ("Input 'x' has the wrong shape", False),
])
def test_backend_messages_that_say_an_allocation_failed(message: str, ran_out: bool) -> None:
    assert out_of_memory(message) is ran_out
