"""The backends in-process: AipuBackend over the fake driver, OnnxBackend over ONNX Runtime."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compassd.executor.backends import AipuBackend, OnnxBackend, check_inputs
from compassd.executor.manifest import TensorSpec
from compassd.protocol.errors import ModelRejected, RunFailed, TensorMismatch
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FAKE_AIPU_") or name == "COMPASS_AIPU_DRIVER":
            monkeypatch.delenv(name)


@pytest.fixture
def aipu(fake_lib: Path) -> Iterator[AipuBackend]:
    backend = AipuBackend(str(fake_lib), timeout_ms=10_000)
    yield backend
    backend.close()


def test_check_inputs_matches_by_name_or_position_and_names_what_is_wrong() -> None:
    specs = [TensorSpec("a", "float32", (2, -1)), TensorSpec("b", "int8", (3,))]
    a, b = np.zeros((2, 5), np.float32), np.zeros(3, np.int8)
    assert [x.shape for x in check_inputs("m", specs, [("b", b), ("a", a)])] == [(2, 5), (3,)]
    assert len(check_inputs("m", specs, [("", a), ("", b)])) == 2
    with pytest.raises(TensorMismatch, match="takes 2 input"):
        check_inputs("m", specs, [("", a)])
    with pytest.raises(TensorMismatch, match="needs the input\\(s\\) 'b'"):
        check_inputs("m", specs, [("a", a)])
    with pytest.raises(
        TensorMismatch,
        match=r"'a' of model m must be float32 with shape \(2, \?\), but it is float64",
    ):
        check_inputs("m", specs, [("a", a.astype(np.float64)), ("b", b)])
    with pytest.raises(TensorMismatch, match=r"'b' .* shape is \(4,\)"):
        check_inputs("m", specs, [("a", a), ("b", np.zeros(4, np.int8))])


def test_aipu_identity_add_and_benchmark(aipu: AipuBackend, tmp_path: Path) -> None:
    write_graph(tmp_path / "id.bin", [Tensor(8, "int16")], [Tensor(8, "int16")])
    model = aipu.load(str(tmp_path / "id.bin"), name="id")
    assert model.inputs == (TensorSpec("input0", "int16", (4,)),)
    x = np.array([1, -2, 3, 4], np.int16)
    np.testing.assert_array_equal(aipu.run("id", [x])[0], x)
    times = aipu.benchmark("id", [x], number=2, repeat=3, warmup=0)
    assert len(times) == 3

    write_graph(
        tmp_path / "aipu.bin",
        [Tensor(8, "float32")],
        [Tensor(8, "float32")],
        behaviour="add",
        value=2,
    )
    (tmp_path / "aipu.json").write_text(
        json.dumps(
            {
                "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 2]}],
                "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}],
            }
        )
    )
    added = aipu.load(str(tmp_path / "aipu.bin"), name="add")
    assert added.outputs == (TensorSpec("y", "float32", (1, 2)),)
    out = aipu.run("add", [("x", np.array([[0.5, 1]], np.float32))])
    np.testing.assert_array_equal(out[0], np.array([[2.5, 3]], np.float32))
    healthy, detail = aipu.health()
    assert healthy and "device status" in detail


def test_aipu_rejections_and_failures_are_sentences(aipu: AipuBackend, tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(b"definitely not a graph file")
    with pytest.raises(ModelRejected, match="The NPU driver refused model junk"):
        aipu.load(str(tmp_path / "junk.bin"), name="junk")
    write_graph(tmp_path / "g.bin", [4], [4])
    (tmp_path / "g.json").write_text('{"inputs": [], "outputs": []}')
    with pytest.raises(ModelRejected, match="lists 0 inputs but the graph has 1"):
        aipu.load(str(tmp_path / "g.bin"))
    write_graph(tmp_path / "exc.bin", [4], [4], behaviour="exception")
    aipu.load(str(tmp_path / "exc.bin"), name="exc")
    with pytest.raises(RunFailed, match="raised an exception on the NPU"):
        aipu.run("exc", [np.zeros(4, np.int8)])
    with pytest.raises(RunFailed, match="No model named 'nope' is loaded"):
        aipu.run("nope", [])


def test_aipu_without_a_device_is_unhealthy_and_refuses_models(
    fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_NO_DEVICE", "1")
    backend = AipuBackend(str(fake_lib))
    healthy, detail = backend.health()
    assert not healthy and "cannot be opened" in detail
    with pytest.raises(ModelRejected, match="aipu backend cannot load models"):
        backend.load(str(tmp_path / "x.bin"))
    monkeypatch.delenv("FAKE_AIPU_NO_DEVICE")
    assert backend.health()[0]  # the device came back
    backend.close()


def test_aipu_device_exception_status_is_unhealthy(
    aipu: AipuBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_DEVICE_STATUS", "exception")
    healthy, detail = aipu.health()
    assert not healthy and "EXCEPTION" in detail


def tiny_onnx_model(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add1", [x], [y], [one]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_backend_runs_a_tiny_model_and_checks_inputs(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    backend = OnnxBackend()
    assert backend.health()[0]
    path = tiny_onnx_model(tmp_path / "add1.onnx")
    model = backend.load(str(path), name="add1")
    assert model.inputs == (TensorSpec("x", "float32", (-1, 3)),)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(backend.run("add1", [x])[0], x + 1)
    with pytest.raises(TensorMismatch, match="must be float32"):
        backend.run("add1", [x.astype(np.int32)])
    assert len(backend.benchmark("add1", [x], number=2, repeat=2, warmup=1)) == 2
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01")  # a ModelProto with no graph
    with pytest.raises(ModelRejected, match="ONNX Runtime refused model bad"):
        backend.load(str(tmp_path / "bad.onnx"), name="bad")


def test_onnx_backend_writes_fixed_shape_outputs_into_given_arrays(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add1", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    backend = OnnxBackend()
    backend.load(str(tmp_path / "fixed.onnx"), name="fixed")
    out = [np.zeros((2, 3), np.float32)]
    for k in range(3):  # the same arrays, run after run (IO binding)
        inputs = np.arange(6, dtype=np.float32).reshape(2, 3) * (k + 1)
        (result,) = backend.run("fixed", [inputs], out=out)
        assert result is out[0]
        np.testing.assert_array_equal(out[0], inputs + 1)
    # An array of another shape is not written into: the run gives a new one.
    wrong = [np.zeros(6, np.float32)]
    (z,) = backend.run("fixed", [inputs], out=wrong)
    assert z is not wrong[0] and not wrong[0].any()
    np.testing.assert_array_equal(z, inputs + 1)


def test_aipu_writes_outputs_into_given_arrays_and_reuses_its_job(
    aipu: AipuBackend, tmp_path: Path
) -> None:
    write_graph(tmp_path / "id.bin", [Tensor(8, "int16")], [Tensor(8, "int16")])
    aipu.load(str(tmp_path / "id.bin"), name="id")
    out = [np.zeros(4, np.int16)]
    for k in range(3):
        x = np.array([1, -2, 3, 4], np.int16) * (k + 1)
        (y,) = aipu.run("id", [x], out=out)
        assert y is out[0]
        np.testing.assert_array_equal(out[0], x)
    # An array of the wrong shape is not written into: the run gives a new one.
    wrong = [np.zeros(3, np.int16)]
    (z,) = aipu.run("id", [x], out=wrong)
    assert z is not wrong[0]
    np.testing.assert_array_equal(z, x)


def test_aipu_runs_again_after_a_job_exception(aipu: AipuBackend, tmp_path: Path) -> None:
    write_graph(tmp_path / "exc.bin", [4], [4], behaviour="exception")
    write_graph(tmp_path / "id.bin", [4], [4])
    aipu.load(str(tmp_path / "exc.bin"), name="exc")
    aipu.load(str(tmp_path / "id.bin"), name="id")
    for _ in range(2):
        with pytest.raises(RunFailed, match="raised an exception on the NPU"):
            aipu.run("exc", [np.zeros(4, np.int8)])
    x = np.arange(4, dtype=np.int8)
    np.testing.assert_array_equal(aipu.run("id", [x])[0], x)
    aipu.load(str(tmp_path / "id.bin"), name="id")  # reloading drops the cached job
    np.testing.assert_array_equal(aipu.run("id", [x + 1])[0], x + 1)


def test_aipu_without_its_c_binding_is_unhealthy_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import compassd

    monkeypatch.setitem(sys.modules, "compassd._aipu", None)  # as if it was never built
    monkeypatch.delattr(compassd, "_aipu", raising=False)
    backend = AipuBackend(None)
    healthy, detail = backend.health()
    assert not healthy
    assert "compassd._aipu" in detail and "C compiler" in detail and "python3-dev" in detail
    with pytest.raises(ModelRejected, match="cannot load models: compassd's C binding"):
        backend.load("m.bin")
