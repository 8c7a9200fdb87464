"""ONNX models whose external data points out of the session are refused before ONNX
Runtime sees them (compassd.executor.external_data), whatever ONNX Runtime's version.

Models are built with the ``onnx`` package where it is installed, and by hand (protobuf
wire format written by this file) where it is not, so the check runs under Debian's
Python too. One test goes through a real executor process attached to a session.
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
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor

from compassd.executor.arena import Arena
from compassd.executor.backends import OnnxBackend
from compassd.executor.external_data import check_external_data, external_locations
from compassd.executor.handle import ExecutorHandle, spawn_executor
from compassd.protocol.errors import ModelRejected

DEADLINE = 60.0


# --- protobuf by hand ---------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def tensor(name: str, location: str | None, *, marked: bool = True) -> bytes:
    body = field(1, 4) + field(2, 1) + field(8, name)  # dims [4], FLOAT
    if location is not None:
        body += field(13, field(1, "location") + field(2, location))
        body += field(13, field(1, "length") + field(2, "16"))
    if marked:
        body += field(14, 1)
    return body


def model_with(graph: bytes, **extra: bytes) -> bytes:
    return field(1, 8) + field(7, graph) + b"".join(extra.values())


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def session(tmp_path: Path) -> Path:
    directory = tmp_path / "session-1"
    directory.mkdir()
    (directory / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (tmp_path / "secret.bin").write_bytes(b"not yours, other session")
    return directory


# --- the check ------------------------------------------------------------------------


def test_external_data_at_etc_passwd_is_refused_with_a_sentence(session: Path) -> None:
    model = write(session / "m.onnx", model_with(field(5, tensor("w", "/etc/passwd"))))
    with pytest.raises(ModelRejected) as refused:
        check_external_data(model, str(session), "m.onnx")
    text = str(refused.value)
    assert "tensor 'w' of model m.onnx" in text and "'/etc/passwd'" in text
    assert "outside the session directory" in text


@pytest.mark.parametrize("location", [
    "../secret.bin", "./../secret.bin", "sub/../../secret.bin",
    "../session-1/../secret.bin", "../../../../../../etc/passwd",
])
def test_external_data_that_climbs_out_with_dotdot_is_refused(session: Path,
                                                              location: str) -> None:
    model = write(session / "m.onnx", model_with(field(5, tensor("w", location))))
    with pytest.raises(ModelRejected, match="resolves outside the session directory"):
        check_external_data(model, str(session))


def test_a_symlink_in_the_session_pointing_out_is_refused(session: Path) -> None:
    (session / "link.bin").symlink_to(session.parent / "secret.bin")
    model = write(session / "m.onnx", model_with(field(5, tensor("w", "link.bin"))))
    with pytest.raises(ModelRejected, match="resolves outside"):
        check_external_data(model, str(session))


@pytest.mark.parametrize("location, why", [
    ("missing.bin", "not a file in the session"),
    (".", "not a file in the session"),
    ("*/_ORT_MEM_ADDR_/*", "not a file in the session"),
    ("", "names none"),
    (None, "names none"),
])
def test_locations_that_are_no_file_of_the_session_are_refused(
        session: Path, location: str | None, why: str) -> None:
    model = write(session / "m.onnx", model_with(field(5, tensor("w", location))))
    with pytest.raises(ModelRejected, match=why):
        check_external_data(model, str(session))


def test_tensors_anywhere_in_the_model_are_checked(session: Path) -> None:
    """Initializers, sparse initializers, node attributes (also in subgraphs of
    attributes), functions and training graphs."""
    evil = tensor("evil", "/etc/passwd")
    attribute_tensor = field(5, field(1, "value") + field(5, evil))
    subgraph = field(1, field(4, "Constant") + attribute_tensor)
    places = {
        "initializer": model_with(field(5, evil)),
        "sparse": model_with(field(15, field(1, evil) + field(2, tensor("i", "weights.bin")))),
        "node attribute": model_with(field(1, field(4, "Constant") + attribute_tensor)),
        "attribute tensors": model_with(
            field(1, field(5, field(1, "values") + field(10, evil)))),
        "subgraph": model_with(field(1, field(4, "If") + field(5, field(1, "then_branch")
                                                                 + field(6, subgraph)))),
        "function": field(1, 8) + field(25, field(7, field(4, "Constant") + attribute_tensor)),
        "training": field(1, 8) + field(20, field(2, field(5, evil))),
    }
    for where, data in places.items():
        model = write(session / "m.onnx", data)
        assert ("evil", "/etc/passwd") in external_locations(data), where
        with pytest.raises(ModelRejected, match="tensor 'evil'"):
            check_external_data(model, str(session))


def test_data_inside_the_session_passes_even_in_a_subdirectory(session: Path) -> None:
    (session / "models").mkdir()
    model = write(session / "models" / "m.onnx",
                  model_with(field(5, tensor("w", "../weights.bin"))
                             + field(5, tensor("inline", None, marked=False))))
    check_external_data(model, str(session))
    assert external_locations((session / "models" / "m.onnx").read_bytes()) == [
        ("w", "../weights.bin")]


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\x3a\x05ab", "longer than its message"),
    (b"\x0b\x01", "wire type 3"),
    (b"\x3a\x02\x2a\x7f", "longer than its message"),
    (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "varint"),
])
def test_a_file_that_cannot_be_parsed_is_refused_never_passed_on(
        session: Path, data: bytes, why: str) -> None:
    model = write(session / "m.onnx", data)
    with pytest.raises(ModelRejected, match=why):
        check_external_data(model, str(session))


def test_nesting_deeper_than_the_limit_is_refused(session: Path) -> None:
    graph = field(5, tensor("w", "weights.bin"))
    for _ in range(40):  # graph -> node -> attribute -> graph ... 120 levels
        graph = field(1, field(5, field(6, graph)))
    model = write(session / "m.onnx", model_with(graph))
    with pytest.raises(ModelRejected, match="nested more than"):
        check_external_data(model, str(session))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_either_parsed_or_refused_with_model_rejected(data: bytes) -> None:
    try:
        external_locations(data)
    except Exception as e:  # only the module's own parse error may escape
        assert type(e).__name__ == "_Malformed", repr(e)


# --- with the onnx package: real models, and ONNX Runtime ---------------------------


def onnx_model_with_external(directory: Path, location: str) -> Path:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "addw",
                              [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = directory / "addw.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_the_parser_finds_what_the_onnx_package_finds(session: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = onnx_model_with_external(session, "weights.bin")
    model = onnx.load(str(path), load_external_data=False)
    theirs = [(t.name, {e.key: e.value for e in t.external_data}["location"])
              for t in _get_all_tensors(model) if uses_external_data(t)]
    assert external_locations(path.read_bytes()) == theirs == [("w", "weights.bin")]


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin"])
def test_the_onnx_backend_refuses_before_onnx_runtime_reads_anything(
        session: Path, location: str) -> None:
    pytest.importorskip("onnxruntime")
    path = onnx_model_with_external(session, location)
    backend = OnnxBackend()
    backend.session_dir = str(session)
    with pytest.raises(ModelRejected, match="session directory"):
        backend.load(str(path), name="addw.onnx")
    assert backend.models == {}
    # the same model with its data in the session loads and uses it
    good = onnx_model_with_external(session, "weights.bin")
    backend.load(str(good), name="addw.onnx")
    (y,) = backend.run("addw.onnx", [np.arange(4, dtype=np.float32)])
    np.testing.assert_array_equal(y, np.arange(4, dtype=np.float32) + 1)


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


@pytest_twisted.inlineCallbacks
def test_a_real_executor_refuses_the_passwd_model_and_keeps_serving(
        session: Path, started: list[ExecutorHandle]) -> Any:
    pytest.importorskip("onnxruntime")
    onnx_model_with_external(session, "/etc/passwd")
    (session / "evil.onnx").write_bytes((session / "addw.onnx").read_bytes())
    onnx_model_with_external(session, "weights.bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_AIPU_")}
    h = spawn_executor(reactor, "onnx", tag="cpu", env=env)
    started.append(h)
    arena = Arena.create(session / "arena", 1 << 16)
    try:
        yield h.ready.addTimeout(DEADLINE, reactor)
        yield h.attach(str(session), "arena", 1 << 16, "s1").addTimeout(DEADLINE, reactor)
        with pytest.raises(ModelRejected, match="tensor 'w' of model evil.onnx.*passwd"):
            yield h.load("evil.onnx").addTimeout(DEADLINE, reactor)
        name, inputs, _ = yield h.load("addw.onnx").addTimeout(DEADLINE, reactor)
        assert name == "addw.onnx" and inputs[0].name == "x"
    finally:
        arena.close()
        h.kill()
        yield h.ended.addTimeout(DEADLINE, reactor)
