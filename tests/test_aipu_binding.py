"""The C extension compassd._aipu against the fake NPU driver (tests/fakedriver/).

The extension is built by ``pip install -e .`` or ``python setup.py build_ext --inplace``;
if it cannot be imported, this module fails to collect (an error, not a skip). The fake
driver is compiled here with the system ``cc`` and cached under tests/_build/.

Behaviours that would kill or block the test process (a hung job, a segfault) run in a
child process with a deadline, killed by PID when it must be.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compassd import _aipu
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import DATA_TYPES, Tensor, graph_bytes, write_graph

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0  # seconds: the most any child or thread may take
DEADLINE_MS = int(DEADLINE * 1000)


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build_fake_driver()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake reads its switches at aipu_init_context: start every test from none."""
    for name in list(os.environ):
        if name.startswith("FAKE_AIPU_") or name in ("COMPASS_AIPU_DRIVER", "UMD_LOG_LEVEL"):
            monkeypatch.delenv(name)


@pytest.fixture
def driver(fake_lib: Path) -> Iterator[_aipu.Driver]:
    d = _aipu.Driver(fake_lib)
    yield d
    d.close()


def graph_file(
    tmp_path: Path,
    inputs: Sequence[Tensor | int],
    outputs: Sequence[Tensor | int],
    name: str = "aipu.bin",
    **kw: Any,
) -> str:
    return str(write_graph(tmp_path / name, inputs, outputs, **kw))


def run_child(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs a Python script in a child with a deadline (subprocess kills it by PID)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_AIPU_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=full_env,
        cwd=ROOT,
    )


def start_child(script: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_AIPU_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


def read_line(proc: subprocess.Popen, deadline: float) -> bytes:
    """One line of the child's stdout, failing the test at the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line from the child in time; got {line!r}")
            chunk = os.read(fd, 1)
            if not chunk:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"child closed stdout after {line!r}; stderr:\n{err}")
            line += chunk
    return line


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Polls a condition set by another thread, failing the test at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


# ---------------------------------------------------------------------------------------------
# Module surface
# ---------------------------------------------------------------------------------------------


def test_extension_source_compiles_without_warnings(tmp_path: Path) -> None:
    include = sysconfig.get_paths()["include"]
    result = subprocess.run(
        [
            "cc",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            f"-I{include}",
            str(ROOT / "compassd" / "_aipu.c"),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr


def test_status_names_and_descriptions() -> None:
    assert _aipu.status_name(0x23) == "AIPU_STATUS_ERROR_TIMEOUT"
    assert _aipu.STATUS_ERROR_TIMEOUT == 0x23
    assert _aipu.STATUS_NAMES[0x11] == "AIPU_STATUS_ERROR_JOB_EXCEPTION"
    assert _aipu.status_name(0x487) == "AIPU_STATUS_ERROR_ZERO_DIVISION_ERR"
    assert _aipu.status_name(0x1234) == "AIPU_STATUS_0x1234"
    assert "kernel module" in _aipu.status_description(3)
    assert _aipu.status_description(0x1234) == "unknown status"


EXPECTED_DTYPES = {
    0x0: "uint8",
    0x1: "bool",
    0x2: "uint8",
    0x3: "int8",
    0x4: "uint16",
    0x5: "int16",
    0x6: "uint32",
    0x7: "int32",
    0x8: "uint64",
    0x9: "int64",
    0xA: "float16",
    0xB: "float32",
    0xC: "float64",
    0xD: "uint16",
    0x12: "uint8",
    0x13: "int8",
    0x14: "uint16",
    0x15: "int16",
    0x20: "uint8",
    0x21: "uint8",
    0x22: "uint8",
    0x23: "uint8",
    0x7F: "uint8",  # unknown to the binding: raw bytes
}


def test_dtype_table_matches_the_reference() -> None:
    for code, dtype in EXPECTED_DTYPES.items():
        assert _aipu.dtype_for(code) == dtype
        np.dtype(dtype)  # a name numpy understands
    assert _aipu.DATA_TYPES[0xD] == ("BF16", "uint16")
    assert set(_aipu.DATA_TYPES) == set(EXPECTED_DTYPES) - {0x7F}


def test_graph_and_job_cannot_be_made_directly() -> None:
    with pytest.raises(TypeError):
        _aipu.Graph()
    with pytest.raises(TypeError):
        _aipu.Job()


# ---------------------------------------------------------------------------------------------
# Finding and loading the library
# ---------------------------------------------------------------------------------------------


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "libaipudrv.so"
    with pytest.raises(_aipu.DriverLoadError) as info:
        _aipu.Driver(missing)
    assert info.value.path == str(missing)
    assert info.value.symbol is None
    assert str(missing) in str(info.value)
    assert "COMPASS_AIPU_DRIVER" in str(info.value)


def test_bad_path_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="empty"):
        _aipu.Driver("")
    with pytest.raises(ValueError):
        _aipu.Driver("lib\0aipudrv.so")
    with pytest.raises(TypeError):
        _aipu.Driver(42)  # type: ignore[arg-type]
    monkeypatch.setenv("COMPASS_AIPU_DRIVER", "")  # empty means unset
    assert _aipu.default_driver_path() == "libaipudrv.so"


def test_a_file_that_is_not_a_library_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "libaipudrv.so"
    bogus.write_text("not an ELF file\n")
    with pytest.raises(_aipu.DriverLoadError, match="cannot load the NPU driver library"):
        _aipu.Driver(str(bogus))


def test_missing_required_symbol_names_symbol_and_path() -> None:
    lib = build_fake_driver(defines=["FAKE_OMIT_FINISH_JOB"])
    with pytest.raises(_aipu.DriverLoadError) as info:
        _aipu.Driver(lib)
    assert info.value.symbol == "aipu_finish_job"
    assert info.value.path == str(lib)
    assert "aipu_finish_job" in str(info.value) and str(lib) in str(info.value)


def test_python_api_build_is_refused() -> None:
    lib = build_fake_driver(defines=["FAKE_PYTHON_API"])
    with pytest.raises(_aipu.DriverLoadError, match="python_api"):
        _aipu.Driver(lib)


def test_path_comes_from_the_environment_when_not_given(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _aipu.default_driver_path() == "libaipudrv.so"
    monkeypatch.setenv("COMPASS_AIPU_DRIVER", str(fake_lib))
    assert _aipu.default_driver_path() == str(fake_lib)
    with _aipu.Driver() as d:
        assert d.path == str(fake_lib)
        assert d.version == "6.1.0"


def test_without_path_or_environment_the_loader_search_path_is_used() -> None:
    # In a fresh process: once any libaipudrv.so is loaded, the loader resolves the bare
    # name to it by SONAME. No libaipudrv.so is installed on test machines.
    result = run_child("""
        from compassd import _aipu
        try:
            _aipu.Driver()
        except _aipu.DriverLoadError as e:
            print(e.path)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "libaipudrv.so\n"


def test_info_reports_versions_target_and_topology(driver: _aipu.Driver) -> None:
    assert driver.abi == "6.1" and driver.abi_source == "file name"
    assert driver.version == "6.1.0" and driver.kmd_version == "6.1.0"
    assert driver.real_path is not None and driver.real_path.endswith("libaipudrv.so.6.1.0")
    assert driver.target() == "X2_1204MP3"
    assert (driver.partition_count(), driver.cluster_count(), driver.core_count()) == (1, 1, 3)
    assert driver.device_status() == "idle"
    assert driver.poll_any_thread is True
    assert "aipu_ioctl" in driver.features and "aipu_get_target" in driver.features
    info = driver.info()
    assert info["target"] == "X2_1204MP3" and info["cores"] == 3 and info["partitions"] == 1
    assert info["umd_version"] == "6.1.0" and info["device_status"] == "idle"
    assert info["poisoned"] is False
    assert "6.1.0" in repr(driver)


def test_topology_errors_are_driver_errors(driver: _aipu.Driver) -> None:
    with pytest.raises(_aipu.DriverError) as info:
        driver.core_count(partition=0, cluster=1)
    assert info.value.status_name == "AIPU_STATUS_ERROR_INVALID_CLUSTER_ID"
    with pytest.raises(_aipu.DriverError) as info:
        driver.core_count(partition=5)
    assert info.value.status == _aipu.STATUS_ERROR_INVALID_PARTITION_ID
    with pytest.raises(_aipu.DriverError) as info:
        driver.cluster_count(partition=5)
    assert info.value.status == _aipu.STATUS_ERROR_INVALID_OP


def test_fake_configuration_reaches_the_report(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_TARGET", "X3P_1304MP2")
    monkeypatch.setenv("FAKE_AIPU_PARTITIONS", "2")
    monkeypatch.setenv("FAKE_AIPU_DEVICE_STATUS", "exception")
    with _aipu.Driver(fake_lib) as d:
        info = d.info()
        assert info["target"] == "X3P_1304MP2"
        assert info["partitions"] == 2 and info["cores"] == 4
        assert d.device_status() == "exception"
        monkeypatch.setenv("FAKE_AIPU_DEVICE_STATUS", "busy")
        assert d.device_status() == "busy"


def test_no_device_mode_raises_no_device_error(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_NO_DEVICE", "1")
    with pytest.raises(_aipu.NoDeviceError) as info:
        _aipu.Driver(fake_lib)
    e = info.value
    assert isinstance(e, _aipu.DriverError)
    assert e.status == 0x3 and e.status_name == "AIPU_STATUS_ERROR_OPEN_DEV_FAIL"
    assert e.call == "aipu_init_context"
    # The driver's own text, fetched with a NULL context as the real driver allows for 0x3.
    assert e.driver_message.startswith("AIPU device open operation failed")
    assert e.driver_message in str(e)


def test_init_failure_without_a_driver_message_uses_ours(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a NULL context the driver only explains OPEN_DEV_FAIL; for anything else it would
    # hand back the NULL_PTR text, which the binding must not show.
    monkeypatch.setenv("FAKE_AIPU_DEV_ABNORMAL", "1")
    with pytest.raises(_aipu.DriverError) as info:
        _aipu.Driver(fake_lib)
    e = info.value
    assert not isinstance(e, _aipu.NoDeviceError)
    assert e.status == 0x4 and e.driver_message == ""
    assert _aipu.status_description(4) in str(e)
    assert "NULL pointer" not in str(e)


# ---------------------------------------------------------------------------------------------
# ABI differences
# ---------------------------------------------------------------------------------------------


def test_abi_argument_is_validated(fake_lib: Path) -> None:
    with _aipu.Driver(fake_lib, abi="6.1.0") as d:
        assert d.abi == "6.1" and d.abi_source == "argument"
    with pytest.raises(ValueError, match="unknown driver ABI '4.2'"):
        _aipu.Driver(fake_lib, abi="4.2")
    with pytest.raises(TypeError):
        _aipu.Driver(fake_lib, abi=6)  # type: ignore[arg-type]
    assert _aipu.SUPPORTED_ABIS == ("5.8", "5.9", "5.10", "5.11", "6.0", "6.1")


def test_umd_5_9_has_a_float_zero_point(tmp_path: Path) -> None:
    lib = build_fake_driver(abi="5.9")
    path = graph_file(tmp_path, [Tensor(4, "int8", 0.25, -7)], [Tensor(4, "int8", 2.0, 3)])
    with _aipu.Driver(lib) as d:
        assert d.abi == "5.9" and d.version == "5.9.0"  # through ioctl number 270
        assert d.poll_any_thread  # HW config bit 0x800 in 5.x
        with d.load_graph(path) as g:
            (inp,) = g.inputs
            assert isinstance(inp.zero_point, float) and inp.zero_point == -7.0
            assert inp.scale == 0.25 and inp.dtype == "int8"
            out = np.zeros(4, np.int8)
            g.run([np.arange(4, dtype=np.int8)], [out])
            assert out.tolist() == [0, 1, 2, 3]
        # 5.9's load config has no extra_weight_path field.
        with pytest.raises(ValueError, match="extra_weight_path"):
            d.load_graph(path, extra_weight_path=str(tmp_path))


def test_umd_5_11_uses_its_own_config_bits(tmp_path: Path) -> None:
    lib = build_fake_driver(abi="5.11")
    path = graph_file(tmp_path, [Tensor(4, "int8", 1.0, -7)], [4])
    with _aipu.Driver(lib) as d:
        assert (d.abi, d.version, d.poll_any_thread) == ("5.11", "5.11.0", True)
        with d.load_graph(path) as g:
            assert g.inputs[0].zero_point == -7 and isinstance(g.inputs[0].zero_point, int)
            assert g.build_version is None  # no known ioctl number before 6.1
    # Told the wrong release, the 6.x HW bit is rejected by 5.11: cross-thread polling is off
    # and GET_VERSION (273, unknown to 5.11) fails, so the version comes from the file name.
    with _aipu.Driver(lib, abi="6.1") as d:
        assert d.poll_any_thread is False
        assert d.version == "5.11.0" and d.kmd_version is None


def test_release_is_read_from_the_real_file_name(fake_lib: Path, tmp_path: Path) -> None:
    real = fake_lib.resolve()
    copies = {}
    for name in ("libaipudrv.so.5.1.0", "libaipudrv.so.7.0.0", "libaipudrv.so"):
        (tmp_path / name).mkdir()
        copies[name] = tmp_path / name / name
        shutil.copy(real, copies[name])
    with pytest.raises(_aipu.DriverLoadError, match="UMD 5.1.0.*pass abi="):
        _aipu.Driver(copies["libaipudrv.so.5.1.0"])
    with _aipu.Driver(copies["libaipudrv.so.5.1.0"], abi="6.1") as d:
        assert d.abi_source == "argument"
    with _aipu.Driver(copies["libaipudrv.so.7.0.0"]) as d:
        # Newer than the table: the newest layout is assumed, and no ioctl number is trusted.
        assert (d.abi, d.abi_source, d.version, d.kmd_version) == ("6.1", "assumed", "7.0.0", None)
    with _aipu.Driver(copies["libaipudrv.so"]) as d:  # a bare file, as TVM ships it
        assert (d.abi_source, d.version) == ("assumed", None)


def test_driver_without_optional_symbols_still_runs(tmp_path: Path) -> None:
    lib = build_fake_driver(defines=["FAKE_NO_OPTIONAL"])
    path = graph_file(tmp_path, [4], [4])
    with _aipu.Driver(lib) as d:
        assert d.features == frozenset()
        assert d.poll_any_thread is False
        assert d.target() is None and d.device_status() is None and d.core_count() is None
        assert d.version == "6.1.0"  # from the file name
        info = d.info()
        assert info["target"] is None and info["cores"] is None and info["partitions"] is None
        with pytest.raises(NotImplementedError, match="aipu_config_global"):
            d.set_version_check(False)
        with d.load_graph(path) as g:
            assert g.build_version is None
            out = bytearray(4)
            g.run([b"\x01\x02\x03\x04"], [out])
            assert out == b"\x01\x02\x03\x04"
            with g.create_job() as job:
                with pytest.raises(NotImplementedError, match="aipu_config_job"):
                    job.configure_dump(_aipu.DUMP_OUTPUT, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------


def test_descriptors_carry_index_size_type_and_quantisation(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    path = graph_file(
        tmp_path,
        [Tensor(12, "float32"), Tensor(6, "int8", 0.5, -128)],
        [Tensor(16, "uint16", 0.125, 7)],
        other_tensors=[Tensor(64, "uint8", kind="profiler")],
    )
    with driver.load_graph(path) as g:
        assert g.id == 1 << 32 and g.path == path and g.driver is driver
        a, b = g.inputs
        assert (a.index, a.tensor_type, a.size, a.data_type, a.dtype) == (0, 0, 12, 0xB, "float32")
        assert (b.index, b.size, b.dtype, b.scale, b.zero_point) == (1, 6, "int8", 0.5, -128)
        (o,) = g.outputs
        assert (o.index, o.tensor_type, o.size, o.dtype) == (0, _aipu.TENSOR_OUTPUT, 16, "uint16")
        assert (o.scale, o.zero_point) == (0.125, 7)
        assert tuple(o) == (0, 1, 16, 0x4, "uint16", 0.125, 7)
        (prof,) = g.tensors(_aipu.TENSOR_PROFILER)
        assert prof.size == 64 and prof.tensor_type == _aipu.TENSOR_PROFILER
        assert g.tensors(_aipu.TENSOR_OUT_TENSOR_SHAPE) == ()
        with pytest.raises(_aipu.DriverError) as info:
            g.tensors(_aipu.TENSOR_LAYER_COUNTER)
        assert info.value.status_name == "AIPU_STATUS_ERROR_INVALID_TENSOR_TYPE"
        assert g.build_version == 0x000B0401


@pytest.mark.parametrize("code", sorted(EXPECTED_DTYPES))
def test_every_data_type_maps_to_its_numpy_dtype(
    driver: _aipu.Driver, tmp_path: Path, code: int
) -> None:
    with driver.load_graph(graph_file(tmp_path, [Tensor(8, code)], [8])) as g:
        assert g.inputs[0].data_type == code
        assert g.inputs[0].dtype == EXPECTED_DTYPES[code]


def test_graph_ids_are_reused_smallest_first(driver: _aipu.Driver, tmp_path: Path) -> None:
    path = graph_file(tmp_path, [4], [4])
    a, b, c = (driver.load_graph(path) for _ in range(3))
    assert [g.id >> 32 for g in (a, b, c)] == [1, 2, 3]
    b.close()
    d = driver.load_graph(path)
    assert d.id >> 32 == 2
    for g in (a, c, d):
        g.close()


def test_graph_loads_from_memory(driver: _aipu.Driver) -> None:
    with driver.load_graph_bytes(graph_bytes([4], [4], behaviour="add", value=1)) as g:
        assert g.path is None
        out = bytearray(4)
        g.run([bytes([1, 2, 3, 4])], [out])
        assert list(out) == [2, 3, 4, 5]
    with pytest.raises(_aipu.DriverError) as info:
        driver.load_graph_bytes(b"")
    assert info.value.status_name == "AIPU_STATUS_ERROR_INVALID_SIZE"
    assert info.value.call == "aipu_load_graph_helper"


BAD_GRAPHS = {
    "short": (b"\x7fELF\x01\x01", "AIPU_STATUS_ERROR_GVERSION_UNSUPPORTED"),
    "not_elf": (b"MZ" + b"\0" * 100, "AIPU_STATUS_ERROR_GVERSION_UNSUPPORTED"),
    "aipu_bin_v1v2": (b"AIPU BIN\0" + b"\0" * 100, "AIPU_STATUS_ERROR_GVERSION_UNSUPPORTED"),
    "truncated_elf": (graph_bytes([4], [4])[:40], "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "cut_short": (graph_bytes([4], [4])[:-20], "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "wrong_machine": (graph_bytes([4], [4], e_machine=0x28), "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "not_exec": (graph_bytes([4], [4], e_type=1), "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "no_text": (graph_bytes([4], [4], with_text=False), "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "no_note": (graph_bytes([4], [4], with_note=False), "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "no_io": (graph_bytes([4], [4], with_io=False), "AIPU_STATUS_ERROR_INVALID_GBIN"),
    "unknown_target": (
        graph_bytes([4], [4], device=0x0009_1999),
        "AIPU_STATUS_ERROR_TARGET_NOT_FOUND",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_bad_graph_files_are_rejected_with_the_driver_status(
    driver: _aipu.Driver, tmp_path: Path, case: str
) -> None:
    data, status_name = BAD_GRAPHS[case]
    path = tmp_path / "aipu.bin"
    path.write_bytes(data)
    with pytest.raises(_aipu.DriverError) as info:
        driver.load_graph(path)
    e = info.value
    assert e.status_name == status_name and e.call == "aipu_load_graph"
    assert str(path) in str(e) and e.driver_message in str(e) and e.driver_message
    # From memory, the same checks apply.
    with pytest.raises(_aipu.DriverError) as info:
        driver.load_graph_bytes(data)
    assert info.value.status_name == status_name


def test_missing_graph_file_is_open_file_fail(driver: _aipu.Driver, tmp_path: Path) -> None:
    with pytest.raises(_aipu.DriverError) as info:
        driver.load_graph(tmp_path / "nope" / "aipu.bin")
    assert info.value.status == 0xC
    assert info.value.driver_message == "UMD fails in opening the specified file."


def test_target_check_can_be_turned_off(driver: _aipu.Driver, tmp_path: Path) -> None:
    path = graph_file(tmp_path, [4], [4], target="X3P_1304")
    with pytest.raises(_aipu.DriverError) as info:
        driver.load_graph(path)
    assert info.value.status_name == "AIPU_STATUS_ERROR_TARGET_NOT_FOUND"
    driver.set_version_check(False)
    driver.load_graph(path).close()
    driver.set_version_check(True)
    with pytest.raises(_aipu.DriverError):
        driver.load_graph(path)


def test_extra_weights_are_looked_up_next_to_the_graph(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    path = graph_file(tmp_path, [4], [4], extra_weights=["aipu.bin.extraweight0"])
    with pytest.raises(_aipu.DriverError) as info:
        driver.load_graph(path)
    assert info.value.status_name == "AIPU_STATUS_ERROR_READ_FILE_FAIL"
    (tmp_path / "aipu.bin.extraweight0").write_bytes(b"\0" * 16)
    driver.load_graph(path).close()  # default: the graph's own directory
    elsewhere = tmp_path / "weights"
    elsewhere.mkdir()
    with pytest.raises(_aipu.DriverError):
        driver.load_graph(path, extra_weight_path=elsewhere)
    (elsewhere / "aipu.bin.extraweight0").write_bytes(b"\0")
    driver.load_graph(path, extra_weight_path=elsewhere).close()
    with pytest.raises(_aipu.DriverError):  # from memory there is no default directory
        driver.load_graph_bytes(Path(path).read_bytes())
    driver.load_graph_bytes(Path(path).read_bytes(), extra_weight_path=tmp_path).close()


# ---------------------------------------------------------------------------------------------
# Running jobs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "float16", "float32", "int64"])
def test_identity_returns_the_input(driver: _aipu.Driver, tmp_path: Path, dtype: str) -> None:
    x = (np.arange(24) % 100).astype(dtype).reshape(2, 3, 4)
    path = graph_file(tmp_path, [Tensor(x.nbytes, dtype)], [Tensor(x.nbytes, dtype)])
    with driver.load_graph(path) as g:
        out = np.empty_like(x)
        g.run([x], [out])
        np.testing.assert_array_equal(out, x)


def test_add_constant_per_dtype(driver: _aipu.Driver, tmp_path: Path) -> None:
    ins: list[np.ndarray[Any, Any]] = [
        np.array([1, 127, -128], np.int8),
        np.array([0.5, -1.0], np.float32),
        np.array([250, 5], np.uint8),
        np.array([2**31 - 1, 0], np.int32),
    ]
    path = graph_file(
        tmp_path,
        [Tensor(a.nbytes, str(a.dtype)) for a in ins],
        [Tensor(a.nbytes, str(a.dtype)) for a in ins],
        behaviour="add",
        value=10,
    )
    with driver.load_graph(path) as g:
        outs = [np.zeros_like(a) for a in ins]
        g.run(ins, outs)
    assert outs[0].tolist() == [11, -119, -118]  # wraps as the integer type does
    assert outs[1].tolist() == [10.5, 9.0]
    assert outs[2].tolist() == [4, 15]
    assert outs[3].tolist() == [-(2**31) + 9, 10]


def test_a_job_can_be_rerun_with_new_inputs(driver: _aipu.Driver, tmp_path: Path) -> None:
    path = graph_file(
        tmp_path, [Tensor(4, "uint8")], [Tensor(4, "uint8")], behaviour="add", value=1
    )
    with driver.load_graph(path) as g, g.create_job() as job:
        assert job.id == g.id + 1 and job.graph is g and job.state == "idle"
        out = np.zeros(4, np.uint8)
        for k in range(3):
            job.run([np.full(4, k, np.uint8)], [out])
            assert out.tolist() == [k + 1] * 4 and job.state == "done"
    assert job.closed and job.state == "closed"


def test_an_output_longer_than_its_input_is_zero_past_the_copy_on_every_run(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    # The fake writes each output byte once (the input's bytes, then zeros past them):
    # a job run again must not keep the last run's tail (here, the constant it added).
    path = graph_file(
        tmp_path, [Tensor(4, "uint8")], [Tensor(8, "uint8")], behaviour="add", value=1
    )
    with driver.load_graph(path) as g, g.create_job() as job:
        out = np.full(8, 99, np.uint8)
        for k in range(3):
            job.run([np.full(4, 10 * k, np.uint8)], [out])
            assert out.tolist() == [10 * k + 1] * 4 + [1] * 4


def test_any_buffer_type_is_accepted(driver: _aipu.Driver, tmp_path: Path) -> None:
    with driver.load_graph(graph_file(tmp_path, [4, 4, 4], [4, 4, 4])) as g:
        outs: list[Any] = [bytearray(4), memoryview(bytearray(4)), np.zeros(4, np.int8)]
        g.run([b"abcd", bytearray(b"efgh"), memoryview(b"ijkl")], outs)
        assert [bytes(o) for o in outs] == [b"abcd", b"efgh", b"ijkl"]


def test_buffer_sizes_are_checked_before_the_driver_copies(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    path = graph_file(tmp_path, [Tensor(16, "float32"), Tensor(4)], [Tensor(8, "int16")])
    with driver.load_graph(path) as g, g.create_job() as job:
        good_in: list[np.ndarray[Any, Any]] = [np.zeros(4, np.float32), np.zeros(4, np.int8)]
        with pytest.raises(_aipu.TensorSizeError) as info:
            job.run([np.zeros(3, np.float32), good_in[1]], [np.zeros(4, np.int16)])
        e = info.value
        assert isinstance(e, ValueError)
        assert (e.kind, e.index, e.expected, e.given) == ("input", 0, 16, 12)
        assert str(e) == "input tensor 0: expected 16 bytes (float32), got 12 bytes"
        with pytest.raises(_aipu.TensorSizeError, match="output tensor 0: expected 8 bytes"):
            job.run(good_in, [np.zeros(5, np.int16)])
        with pytest.raises(ValueError, match="2 input tensors but 1 buffer was given"):
            job.run(good_in[:1], [np.zeros(4, np.int16)])
        with pytest.raises(ValueError, match="1 output tensor but 2 buffers were given"):
            job.run(good_in, [np.zeros(4, np.int16)] * 2)
        assert job.state == "idle"  # nothing reached the driver


def test_wrong_buffer_kinds_are_type_errors(driver: _aipu.Driver, tmp_path: Path) -> None:
    with driver.load_graph(graph_file(tmp_path, [Tensor(8, "int16")], [Tensor(8, "int16")])) as g:
        x, out = np.zeros(4, np.int16), np.zeros(4, np.int16)
        with pytest.raises(TypeError, match="output tensor 0: expected a C-contiguous writable"):
            g.run([x], [b"12345678"])
        frozen = np.zeros(4, np.int16)
        frozen.flags.writeable = False
        with pytest.raises(TypeError, match="writable"):
            g.run([x], [frozen])
        with pytest.raises(TypeError, match="input tensor 0: expected a C-contiguous") as info:
            g.run([np.zeros(8, np.int16)[::2]], [out])
        assert info.value.__cause__ is not None
        with pytest.raises(TypeError, match="not a single"):
            g.run(x, [out])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="got int"):
            g.run([7], [out])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="not int"):
            g.run(7, [out])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            g.run([x], [out], timeout_ms="soon")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            driver.load_graph(12)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            g.tensors("input")  # type: ignore[arg-type]


def test_flush_and_wait(driver: _aipu.Driver, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    path = graph_file(tmp_path, [4], [4], gate=gate)
    with driver.load_graph(path) as g, g.create_job() as job:
        job.load_inputs([b"wxyz"])
        job.flush()
        assert job.state == "scheduled"
        assert job.wait(0) is False  # polled: "not yet"
        assert job.wait(20) is False  # the driver's poll timed out: still "not yet"
        with pytest.raises(RuntimeError, match="still running"):
            job.get_outputs([bytearray(4)])
        with pytest.raises(RuntimeError, match="still running"):
            job.flush()
        with pytest.raises(RuntimeError, match="still running"):
            job.load_inputs([b"abcd"])
        gate.touch()
        assert job.wait(DEADLINE_MS) is True
        assert job.state == "done" and job.wait() is True
        out = bytearray(4)
        job.get_outputs([out])
        assert out == b"wxyz"
        with pytest.raises(RuntimeError, match="not running"):
            g.create_job().wait()


def test_outputs_of_a_job_that_never_ran_are_refused_by_the_driver(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    with driver.load_graph(graph_file(tmp_path, [4], [4])) as g, g.create_job() as job:
        with pytest.raises(_aipu.DriverError) as info:
            job.get_outputs([bytearray(4)])
        assert info.value.status_name == "AIPU_STATUS_ERROR_INVALID_OP"
        assert info.value.call == "aipu_get_tensor" and info.value.job_id == job.id


def test_get_tensor_reads_any_tensor_type(driver: _aipu.Driver, tmp_path: Path) -> None:
    path = graph_file(tmp_path, [4], [4], other_tensors=[Tensor(32, "uint8", kind="profiler")])
    with driver.load_graph(path) as g, g.create_job() as job:
        job.run([b"1234"], [bytearray(4)])
        prof = np.ones(32, np.uint8)
        job.get_tensor(_aipu.TENSOR_PROFILER, 0, prof)
        assert prof.tolist() == [0] * 32
        out = bytearray(4)
        job.get_tensor(_aipu.TENSOR_OUTPUT, 0, out)
        assert out == b"1234"
        with pytest.raises(IndexError):
            job.get_tensor(_aipu.TENSOR_PROFILER, 1, prof)
        with pytest.raises(_aipu.TensorSizeError):
            job.get_tensor(_aipu.TENSOR_PROFILER, 0, bytearray(31))


def test_dump_configuration_reaches_the_driver(driver: _aipu.Driver, tmp_path: Path) -> None:
    with driver.load_graph(graph_file(tmp_path, [4], [4])) as g, g.create_job() as job:
        job.configure_dump(_aipu.DUMP_OUTPUT, tmp_path, output_prefix="run1_")
        job.run([b"dump"], [bytearray(4)])
        assert (tmp_path / "run1_output0.bin").read_bytes() == b"dump"
        with pytest.raises(_aipu.DriverError) as info:
            job.configure_dump(1 << 40, tmp_path)
        assert info.value.status_name == "AIPU_STATUS_ERROR_INVALID_CONFIG"


def test_job_exception(driver: _aipu.Driver, tmp_path: Path) -> None:
    path = graph_file(tmp_path, [4], [4], behaviour="exception")
    with driver.load_graph(path) as g:
        job = g.create_job()
        with pytest.raises(_aipu.JobException) as info:
            job.run([b"abcd"], [bytearray(4)], timeout_ms=DEADLINE_MS)
        e = info.value
        assert e.status == _aipu.STATUS_ERROR_JOB_EXCEPTION and e.call == "aipu_finish_job"
        assert e.job_id == job.id
        assert e.driver_message == "The flushed job encounters exception during execution."
        assert job.state == "exception"
        # The driver refuses to reload an excepted job; a fresh one is needed.
        with pytest.raises(_aipu.DriverError) as info2:
            job.run([b"abcd"], [bytearray(4)])
        assert info2.value.status_name == "AIPU_STATUS_ERROR_INVALID_OP"
        assert info2.value.call == "aipu_load_tensor" and "input tensor 0" in str(info2.value)
        assert job.state == "exception"
        job.close()
        with g.create_job() as again:
            again.flush()
            with pytest.raises(_aipu.JobException) as info3:
                again.wait()
            assert info3.value.call == "aipu_get_job_status"
        assert not driver.poisoned


def test_add_on_an_unsupported_type_raises_a_job_exception(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    path = graph_file(tmp_path, [Tensor(4, "float16")], [Tensor(4, "float16")], behaviour="add")
    with driver.load_graph(path) as g, pytest.raises(_aipu.JobException):
        g.run([np.zeros(2, np.float16)], [np.zeros(2, np.float16)])


def test_dispatch_failure(fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AIPU_DISPATCH_FAIL", "1")
    with _aipu.Driver(fake_lib) as d, d.load_graph(graph_file(tmp_path, [4], [4])) as g:
        with g.create_job() as job:
            with pytest.raises(_aipu.DriverError) as info:
                job.run([b"abcd"], [bytearray(4)])
            assert info.value.status_name == "AIPU_STATUS_ERROR_JOB_DISPATCH_FAIL"
            assert job.state == "idle" and not d.poisoned
            with pytest.raises(_aipu.DriverError) as info:
                job.flush()
            assert info.value.status == 0x37 and job.state == "idle"


def test_out_of_buffer_memory_cleans_the_failed_job(
    fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_MAX_JOBS", "2")
    with _aipu.Driver(fake_lib) as d, d.load_graph(graph_file(tmp_path, [4], [4])) as g:
        first, second = g.create_job(), g.create_job()
        with pytest.raises(_aipu.DriverError) as info:
            g.create_job()
        assert info.value.status_name == "AIPU_STATUS_ERROR_BUF_ALLOC_FAIL"
        assert "out of NPU buffer memory" not in str(info.value)  # the driver's text is shown
        first.close()
        # Had the binding not cleaned the job ID the failed create left behind, the fake
        # would still count three jobs here and refuse again.
        third = g.create_job()
        assert third.id == first.id
        second.close()
        third.close()


def test_graph_run_cleans_its_job(
    fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AIPU_MAX_JOBS", "1")
    with _aipu.Driver(fake_lib) as d, d.load_graph(graph_file(tmp_path, [4], [4])) as g:
        for _ in range(3):  # would run out of jobs if one leaked
            g.run([b"abcd"], [bytearray(4)])
        with pytest.raises(_aipu.TensorSizeError):
            g.run([b"abc"], [bytearray(4)])
        g.run([b"abcd"], [bytearray(4)])


# ---------------------------------------------------------------------------------------------
# Threads and the GIL
# ---------------------------------------------------------------------------------------------


def test_gil_is_released_and_a_busy_job_refuses_other_threads(
    driver: _aipu.Driver, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    slow = driver.load_graph(graph_file(tmp_path, [4], [4], name="slow.bin", gate=gate))
    fast = driver.load_graph(graph_file(tmp_path, [4], [4], name="fast.bin"))
    job = slow.create_job()
    errors: list[BaseException] = []

    def run_slow() -> None:
        try:
            job.run([b"slow"], [bytearray(4)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run_slow)
    t.start()
    # "scheduled" is only visible here once the other thread released the GIL inside run().
    wait_for(lambda: job.state == "scheduled", "the job to start")
    out = bytearray(4)
    fast.run([b"fast"], [out])  # another graph runs meanwhile
    assert out == b"fast"
    with pytest.raises(RuntimeError, match="in use by another thread"):
        job.run([b"slow"], [bytearray(4)])
    with pytest.raises(RuntimeError, match="in use by another thread"):
        job.close()
    with pytest.raises(RuntimeError, match="in progress in another thread"):
        slow.close()
    with pytest.raises(RuntimeError, match="in progress in other threads"):
        driver.close()
    assert job.state == "scheduled"
    gate.touch()
    t.join(DEADLINE)
    assert not t.is_alive() and not errors
    assert job.state == "done"
    job.close()
    slow.close()
    fast.close()


def test_wait_from_another_thread(driver: _aipu.Driver, tmp_path: Path) -> None:
    with driver.load_graph(graph_file(tmp_path, [4], [4])) as g, g.create_job() as job:
        job.flush()
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(job.wait(DEADLINE_MS)))
        t.start()
        t.join(DEADLINE)
        assert result == [True]


def test_wait_from_another_thread_is_refused_when_the_driver_cannot_allow_it(
    fake_lib: Path, tmp_path: Path
) -> None:
    with _aipu.Driver(fake_lib, poll_any_thread=False) as d:
        assert d.poll_any_thread is False
        with d.load_graph(graph_file(tmp_path, [4], [4])) as g, g.create_job() as job:
            job.flush()
            result: list[BaseException] = []

            def wait() -> None:
                try:
                    job.wait(0)
                except RuntimeError as e:
                    result.append(e)

            t = threading.Thread(target=wait)
            t.start()
            t.join(DEADLINE)
            assert len(result) == 1 and "thread that called flush()" in str(result[0])
            assert job.wait(DEADLINE_MS) is True  # the flushing thread may


# ---------------------------------------------------------------------------------------------
# Closing, misuse
# ---------------------------------------------------------------------------------------------


def test_closed_objects_raise_value_errors(fake_lib: Path, tmp_path: Path) -> None:
    d = _aipu.Driver(fake_lib)
    g = d.load_graph(graph_file(tmp_path, [4], [4]))
    job = g.create_job()
    job.close()
    job.close()
    with pytest.raises(ValueError, match="is closed"):
        job.run([b"abcd"], [bytearray(4)])
    job2 = g.create_job()
    g.close()
    g.close()
    with pytest.raises(ValueError, match="graph 0x100000000 is closed"):
        job2.run([b"abcd"], [bytearray(4)])
    with pytest.raises(ValueError, match="is closed"):
        g.create_job()
    job2.close()  # its graph is gone: nothing to clean
    g2 = d.load_graph(graph_file(tmp_path, [4], [4]))
    d.close()
    d.close()
    assert d.closed and "closed" in repr(d)
    for call in (lambda: d.load_graph("x"), d.target, d.info, g2.create_job, lambda: g2.tensors(0)):
        with pytest.raises(ValueError, match="closed"):
            call()
    g2.close()  # the context is gone: nothing to unload


def test_objects_freed_in_any_order_do_not_crash(fake_lib: Path, tmp_path: Path) -> None:
    path = graph_file(tmp_path, [4], [4])
    for order in ("driver_first", "job_first"):
        d = _aipu.Driver(fake_lib)
        g = d.load_graph(path)
        job = g.create_job()
        job.run([b"abcd"], [bytearray(4)])
        if order == "driver_first":
            del d, g  # the job keeps its graph and driver alive
            assert job.graph.driver.closed is False
            del job
        else:
            del job, g, d


def test_driver_output_goes_to_stdout_and_umd_log_level_silences_it(
    fake_lib: Path, tmp_path: Path
) -> None:
    script = f"""
        from compassd import _aipu
        d = _aipu.Driver({str(fake_lib)!r})
        try:
            d.load_graph({str(tmp_path / "missing.bin")!r})
        except _aipu.DriverError as e:
            import sys
            print("caught", e.status_name, file=sys.stderr)
    """
    loud = run_child(script)
    assert loud.returncode == 0, loud.stderr
    assert "[UMD ERROR]" in loud.stdout and "missing.bin" in loud.stdout
    assert "caught AIPU_STATUS_ERROR_OPEN_FILE_FAIL" in loud.stderr
    quiet = run_child(script, {"UMD_LOG_LEVEL": "6"})
    assert quiet.returncode == 0 and quiet.stdout == ""


# ---------------------------------------------------------------------------------------------
# Timeouts, hangs, crashes: in child processes
# ---------------------------------------------------------------------------------------------


def test_timeout_poisons_the_driver_and_the_process_still_exits(
    fake_lib: Path, tmp_path: Path
) -> None:
    hang = graph_file(tmp_path, [4], [4], name="hang.bin", behaviour="hang")
    fine = graph_file(tmp_path, [4], [4], name="fine.bin")
    result = run_child(f"""
        import sys
        from compassd import _aipu
        d = _aipu.Driver({str(fake_lib)!r})
        g = d.load_graph({hang!r})
        other = d.load_graph({fine!r})
        job = g.create_job()
        try:
            job.run([b"abcd"], [bytearray(4)], timeout_ms=100)
        except _aipu.JobTimeout as e:
            assert e.status == 0x23 and e.call == "aipu_finish_job" and e.job_id == job.id, e
            assert "did not finish within 100 ms" in str(e), e
        else:
            sys.exit("no timeout")
        assert job.state == "timed_out" and d.poisoned, (job.state, d.poisoned)
        assert "timed out after 100 ms" in d.poison_reason
        for call in (lambda: d.load_graph({fine!r}), other.create_job,
                     lambda: job.run([b"abcd"], [bytearray(4)])):
            try:
                call()
            except _aipu.DriverPoisoned as e:
                assert "exit this process" in str(e)
            else:
                sys.exit("poisoned driver accepted work")
        assert d.info()["poisoned"] is True and d.target() == "X2_1204MP3"
        job.close(); g.close(); other.close(); d.close()  # all no-ops: nothing is freed
        print("ok", flush=True)
        # Exits with the job's thread still hung inside the fake driver.
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_polling_a_hung_job_says_not_yet_and_abandoning_it_poisons(
    fake_lib: Path, tmp_path: Path
) -> None:
    hang = graph_file(tmp_path, [4], [4], behaviour="hang")
    result = run_child(f"""
        from compassd import _aipu
        d = _aipu.Driver({str(fake_lib)!r})
        g = d.load_graph({hang!r})
        job = g.create_job()
        job.flush()
        assert job.wait(0) is False and job.wait(50) is False
        assert not d.poisoned
        g.close()  # a job still runs: the graph is not unloaded, the driver is poisoned
        assert d.poisoned and "closed while one of its jobs was running" in d.poison_reason
        job.close()
        print("ok", flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_a_hang_without_timeout_blocks_until_the_process_is_killed(
    fake_lib: Path, tmp_path: Path
) -> None:
    hang = graph_file(tmp_path, [4], [4], behaviour="hang")
    proc = start_child(f"""
        import sys
        from compassd import _aipu
        d = _aipu.Driver({str(fake_lib)!r})
        job = d.load_graph({hang!r}).create_job()
        print("running", flush=True)
        job.run([b"abcd"], [bytearray(4)])
        print("returned", flush=True)
    """)
    try:
        assert read_line(proc, time.monotonic() + DEADLINE) == b"running\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)  # still blocked inside the driver
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL
        assert proc.stdout is not None and b"returned" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_a_crashing_graph_kills_the_process_with_sigsegv(fake_lib: Path, tmp_path: Path) -> None:
    crash = graph_file(tmp_path, [4], [4], behaviour="crash")
    result = run_child(f"""
        from compassd import _aipu
        d = _aipu.Driver({str(fake_lib)!r})
        d.load_graph({crash!r}).run([b"abcd"], [bytearray(4)])
        print("survived", flush=True)
    """)
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)
    assert "survived" not in result.stdout


# ---------------------------------------------------------------------------------------------
# The fake driver's own contract (reference section 9), through ctypes
# ---------------------------------------------------------------------------------------------


class FakeApi:
    """ctypes view of a separate copy of the fake, so that process-wide state is its own."""

    def __init__(self, lib: Path) -> None:
        self.lib = ctypes.CDLL(str(lib))
        u32, u64, vp = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p
        for name, args in {
            "aipu_init_context": [ctypes.POINTER(vp)],
            "aipu_deinit_context": [vp],
            "aipu_get_error_message": [vp, u32, ctypes.POINTER(ctypes.c_char_p)],
            "aipu_load_graph_helper": [vp, ctypes.c_char_p, u32, ctypes.POINTER(u64), vp],
            "aipu_unload_graph": [vp, u64],
            "aipu_create_job": [vp, u64, ctypes.POINTER(u64), vp],
            "aipu_clean_job": [vp, u64],
            "aipu_get_tensor_count": [vp, u64, u32, ctypes.POINTER(u32)],
            "aipu_get_tensor_descriptor": [vp, u64, u32, u32, ctypes.c_char_p],
            "aipu_load_tensor": [vp, u64, u32, ctypes.c_char_p],
            "aipu_get_tensor": [vp, u64, u32, u32, ctypes.c_char_p],
            "aipu_finish_job": [vp, u64, ctypes.c_int32],
            "aipu_flush_job": [vp, u64, vp],
            "aipu_get_job_status": [vp, u64, ctypes.POINTER(u32), ctypes.c_int32],
            "aipu_config_global": [vp, u64, ctypes.c_char_p],
        }.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, u32
        ctx = vp()
        assert self.lib.aipu_init_context(ctypes.byref(ctx)) == 0
        self.ctx = ctx

    def __getattr__(self, name: str) -> Callable[..., int]:
        fn = getattr(self.lib, "aipu_" + name)
        return lambda *args: fn(self.ctx, *args)

    def load(self, data: bytes) -> int:
        gid = ctypes.c_uint64()
        assert self.load_graph_helper(data, len(data), ctypes.byref(gid), None) == 0
        return gid.value

    def job(self, graph: int) -> int:
        jid = ctypes.c_uint64()
        assert self.create_job(graph, ctypes.byref(jid), None) == 0
        return jid.value

    def status(self, job: int, timeout: int) -> tuple[int, int]:
        st = ctypes.c_uint32(99)
        ret = self.get_job_status(job, ctypes.byref(st), timeout)
        return ret, st.value


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    api = FakeApi(build_fake_driver(defines=["FAKE_INSTANCE=1"]))
    yield api


def test_fake_error_messages(fake: FakeApi) -> None:
    msg = ctypes.c_char_p()
    assert fake.lib.aipu_get_error_message(None, 3, ctypes.byref(msg)) == 3
    assert (msg.value or b"").startswith(b"AIPU device open operation failed")
    assert fake.lib.aipu_get_error_message(None, 0xC, ctypes.byref(msg)) == 1
    assert msg.value == b"AIPU UMD API input argument(s) contain NULL pointer."
    for code, text in (
        (0x23, b"Timeout on polling job's status"),
        (0x25, b""),
        (0x26, b""),
        (0x2B, b""),
        (0x200, b""),
        (0x481, b""),
    ):
        assert fake.get_error_message(code, ctypes.byref(msg)) == 0
        assert msg.value == text


def test_fake_ids_and_lookups(fake: FakeApi) -> None:
    graph = fake.load(graph_bytes([4, 8], [4]))
    assert graph == 1 << 32
    job = fake.job(graph)
    assert job == graph + 1
    n = ctypes.c_uint32()
    assert fake.get_tensor_count(job, 0, ctypes.byref(n)) == 0 and n.value == 2  # by job ID
    assert fake.get_tensor_count(job, 5, ctypes.byref(n)) == 0x1E
    assert fake.get_tensor_count(0, 0, ctypes.byref(n)) == 0xB
    desc = ctypes.create_string_buffer(20)
    assert fake.get_tensor_descriptor(graph, 0, 1, desc) == 0
    assert int.from_bytes(desc.raw[0:4], "little") == 1  # id == index
    assert int.from_bytes(desc.raw[4:8], "little") == 8
    assert fake.get_tensor_descriptor(graph, 0, 2, desc) == 0x1A
    assert fake.clean_job(graph) == 0x10  # low bits zero: not a job ID
    assert fake.clean_job(graph + 99) == 0  # unknown job in a live graph: a no-op
    assert fake.unload_graph(graph) == 0
    assert fake.clean_job(job) == 0xB  # its graph is gone
    assert fake.load_tensor(job, 0, b"abcd") == 0x10  # unloading destroyed the job
    assert fake.unload_graph(graph) == 0xB
    assert fake.deinit_context() == 0
    assert fake.unload_graph(graph) == 0x2  # the fake can tell a freed handle


def test_fake_job_state_machine(fake: FakeApi, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = fake.job(fake.load(graph_bytes([4], [4], gate=gate)))
    out = ctypes.create_string_buffer(4)
    assert fake.get_tensor(job, 1, 0, out) == 0x14  # never ran
    assert fake.load_tensor(job, 0, None) == 0x1
    assert fake.load_tensor(job, 1, b"abcd") == 0x1A
    assert fake.load_tensor(job, 0, b"abcd") == 0
    assert fake.flush_job(job, None) == 0
    assert fake.load_tensor(job, 0, b"efgh") == 0x14  # scheduled
    assert fake.flush_job(job, None) == 0x14
    assert fake.finish_job(job, 10) == 0x14
    assert fake.status(job, 0) == (0, 0)  # NO_STATUS while running
    assert fake.status(job, 10) == (0x23, 0)
    gate.touch()
    assert fake.status(job, -1) == (0, 1)  # DONE
    assert fake.get_tensor(job, 5, 0, out) == 0x14  # an odd type
    assert fake.get_tensor(job, 1, 1, out) == 0x1A
    assert fake.get_tensor(job, 1, 0, out) == 0 and out.raw == b"abcd"
    gate.unlink()
    assert fake.finish_job(job, 10) == 0x23  # times out, left scheduled
    assert fake.status(job, 0) == (0, 0)
    assert fake.finish_job(job, -1) == 0x14
    gate.touch()
    assert fake.status(job, -1) == (0, 1)
    assert fake.finish_job(job, -1) == 0  # a DONE job runs again
    exc = fake.job(fake.load(graph_bytes([4], [4], behaviour="exception")))
    assert fake.finish_job(exc, -1) == 0x11
    assert fake.status(exc, 0) == (0, 2)  # EXCEPTION, with SUCCESS
    assert fake.get_tensor(exc, 1, 0, out) == 0x14


def test_fake_completion_is_thread_affine_unless_configured(fake: FakeApi) -> None:
    job = fake.job(fake.load(graph_bytes([4], [4])))
    assert fake.flush_job(job, None) == 0
    seen: list[tuple[int, int]] = []

    def poll(timeout: int) -> None:
        seen.append(fake.status(job, timeout))

    def in_thread(timeout: int) -> tuple[int, int]:
        t = threading.Thread(target=poll, args=(timeout,))
        t.start()
        t.join(DEADLINE)
        return seen.pop()

    assert fake.status(job, -1) == (0, 1)  # the flushing thread sees DONE
    assert in_thread(0) == (0, 0)  # another thread never does
    assert in_thread(20) == (0x23, 0)
    hw = 0x20000  # AIPU_CONFIG_TYPE_HW in 6.x
    assert fake.config_global(hw, None) == 0x1  # HW needs its struct
    assert fake.config_global(1 << 40, b"\x00\x01") == 0x6  # unknown bits
    assert fake.config_global(hw, b"\x00\x01") == 0  # poll_in_commit_thread = false
    assert in_thread(0) == (0, 1)


def test_graph_writer_builds_valid_device_words() -> None:
    from tests.fakedriver.graphs import device_word

    assert device_word("X2_1204") == 0x0005_04B4
    assert device_word("X3P_1304") == 0x1006_0000 | 1304
    assert device_word("Z1_0701") == 0x0001_0000 | 701
    with pytest.raises(ValueError):
        device_word("Y9_1")
    assert set(DATA_TYPES.values()) >= set(EXPECTED_DTYPES) - {0x7F}
