"""The arrays ``compass run`` and ``compass bench`` read and check: input files (.npy,
.npz, ``NAME=FILE`` or raw bytes), golden files, and the comparison of an output with its
golden. Every file is read before a board is held; a bad one is a usage error naming it.
"""

from __future__ import annotations

import os
from typing import Any

import click
import numpy as np

from ..tensors import TensorSpec


def _read_array_file(path: str, what: str) -> np.ndarray | dict[str, np.ndarray] | bytes:
    """A .npy file's array, a .npz file's arrays by name, or any other file's raw bytes."""
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror or e}.",
                                 param_hint=what) from e
    except ValueError as e:
        raise click.BadParameter(f"{path} is not a valid numpy file ({e}).",
                                 param_hint=what) from e


InputItem = tuple[str | None, str, "np.ndarray | dict[str, np.ndarray] | bytes"]


def read_inputs(values: tuple[str, ...]) -> list[InputItem]:
    """Read each C{-i} value (C{FILE} or C{NAME=FILE}) now, before any board is held."""
    items: list[InputItem] = []
    for value in values:
        name: str | None = None
        path = value
        if "=" in value and not os.path.exists(value):
            name, path = value.split("=", 1)
        items.append((name, path, _read_array_file(path, "-i/--input")))
    return items


def _raw_array(data: bytes, spec: TensorSpec, path: str, what: str) -> np.ndarray:
    """Raw bytes as the tensor C{spec} (the NPU driver tools' input and golden files)."""
    dtype = np.dtype(spec.dtype)
    if any(d < 0 for d in spec.shape):
        raise click.UsageError(
            f"{path} holds raw bytes but {what} {spec.name!r} is {spec.describe()}, whose"
            " size is not fixed; give a .npy file instead.")
    want = int(np.prod(spec.shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        raise click.UsageError(
            f"{path} is {len(data)} bytes but {what} {spec.name!r} ({spec.describe()})"
            f" takes {want}; give a file of the right size or a .npy file.")
    return np.frombuffer(data, dtype).reshape(spec.shape).copy()


def assemble_inputs(items: list[InputItem], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The inputs by name: unnamed files fill the model's inputs in order, C{NAME=FILE}
    and .npz entries go by name; raw files take the shape and dtype of their input."""
    by_name = {spec.name: spec for spec in specs}
    result: dict[str, np.ndarray] = {}
    position = 0

    def put(name: str, array: np.ndarray, path: str) -> None:
        if name in result:
            raise click.UsageError(f"Input {name!r} is given twice (again by {path}).")
        result[name] = array

    for name, path, data in items:
        if isinstance(data, dict):
            for key, array in data.items():
                put(key, array, path)
            continue
        if name is None:
            if position >= len(specs):
                raise click.UsageError(
                    f"The model takes {len(specs)} input(s) but {path} would be input"
                    f" {position + 1}; give one file per input.")
            name = specs[position].name
            position += 1
        if isinstance(data, bytes):
            if name not in by_name:
                raise click.UsageError(
                    f"The model has no input named {name!r}; its inputs are"
                    f" {', '.join(by_name) or 'none'}.")
            put(name, _raw_array(data, by_name[name], path, "input"), path)
        else:
            put(name, data, path)
    return result


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """Whether C{got} matches the golden C{want} (numpy's isclose: |got - want| <= atol +
    rtol * |want|, so --rtol 0 --atol 0 is exact), with the largest absolute and relative
    errors, and the reason when it does not."""
    row: dict[str, Any] = {"passed": False, "max_abs": None, "max_rel": None, "reason": ""}
    if got.shape != want.shape:
        row["reason"] = (f"shape {tuple(got.shape)} but the golden is {tuple(want.shape)}")
        return row
    a = got.astype(np.float64)
    b = want.astype(np.float64)
    if a.size == 0:
        row.update(passed=True, max_abs=0.0, max_rel=0.0)
        return row
    error = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(error == 0, 0.0, error / np.abs(b))
    row["max_abs"] = float(np.nanmax(error)) if not np.all(np.isnan(error)) else None
    row["max_rel"] = float(np.nanmax(relative)) if not np.all(np.isnan(relative)) else None
    close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    row["passed"] = bool(close.all())
    if not row["passed"]:
        row["reason"] = f"{int((~close).sum())} of {close.size} values differ"
    return row


def read_golden(path: str, outputs: list[np.ndarray], specs: list[TensorSpec]
                ) -> dict[str, np.ndarray]:
    """The golden outputs by name from a .npz (by output name, as -o writes), a .npy (a
    model with one output) or raw bytes (all outputs concatenated in model order, as the
    NPU driver's tools take them)."""
    data = _read_array_file(path, "--check")
    names = [spec.name for spec in specs]
    if isinstance(data, dict):
        return data
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise click.UsageError(
                f"{path} holds one array but the model has {len(names)} outputs; give a"
                " .npz keyed by output name (as -o writes).")
        return {names[0]: data}
    total = sum(o.nbytes for o in outputs)
    if len(data) != total:
        raise click.UsageError(
            f"{path} is {len(data)} bytes but the outputs together are {total} bytes; a raw"
            " golden file holds every output's bytes in model order.")
    golden: dict[str, np.ndarray] = {}
    offset = 0
    for name, out in zip(names, outputs, strict=True):
        golden[name] = np.frombuffer(data[offset:offset + out.nbytes], out.dtype
                                     ).reshape(out.shape)
        offset += out.nbytes
    return golden



def zeros_for(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs of zeros for a benchmark without -i; a dimension of any size becomes 1."""
    return {spec.name: np.zeros([d if d >= 0 else 1 for d in spec.shape],
                                np.dtype(spec.dtype)) for spec in specs}



def check_output(name: str, result: np.ndarray, expected: dict[str, np.ndarray],
               rtol: float, atol: float) -> dict[str, Any]:
    if name not in expected:
        return {"name": name, "passed": False, "max_abs": None, "max_rel": None,
                "reason": f"the golden file has no {name!r} (it has"
                f" {', '.join(expected) or 'nothing'})"}
    return {"name": name, **compare(result, np.asarray(expected[name]), rtol, atol)}


def worst_of_frames(checks: list[list[dict[str, Any]]], rtol: float, atol: float) -> dict[str, Any]:
    """Per output, the frame with the largest error (or the first that failed)."""
    rows: list[dict[str, Any]] = []
    for per_output in zip(*checks, strict=True):
        failed = [r for r in per_output if not r["passed"]]
        pick = failed[0] if failed else max(per_output, key=lambda r: r["max_abs"] or 0.0)
        rows.append(dict(pick))
    return {"passed": all(r["passed"] for r in rows), "rtol": rtol, "atol": atol,
            "outputs": rows}

