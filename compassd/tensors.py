"""Tensors as they are described on the wire: dtype names, shapes, specs and byte runs.

Every tensor that crosses a process boundary (client to board, board to executor) travels
as a row of text and numbers (C{name}, C{dtype}, C{shape}, C{nbytes}) followed by its raw
bytes in C order and the machine's byte order. This module is the one place that reads
and writes those descriptions, so the client, the board and the executor agree on which
dtypes exist and what a shape means. It needs numpy and the wire's error classes; no
reactor, no I/O.

Dtype names are looked up in a fixed table, never handed to C{np.dtype}: older numpy
evaluates some dtype strings as Python literals, and a peer's text has no business being
evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from .protocol.errors import TensorMismatch

DTYPES: Mapping[str, np.dtype[Any]] = {
    name: np.dtype(name)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64")
}
"""The dtypes a tensor may travel as, by the name it travels under."""


def dtype_name(dtype: Any) -> str:
    """The name a tensor's dtype travels under (C{float32}, C{int8}, C{bool}...).

    Only plain numeric and boolean dtypes cross; byte order is the machine's.
    """
    dt = np.dtype(dtype)
    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        raise ValueError(
            f"dtype {dt} cannot cross the arena: only bool, integer and float tensors can"
        )
    return dt.name


def parse_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a travelled dtype name; a ValueError that names it otherwise."""
    dt = DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise ValueError(
            f"{name!r} is not a tensor dtype this system carries (one of"
            f" {', '.join(DTYPES)})")
    return dt


def shape_text(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple, with C{?} for a dimension of any size (negative)."""
    dims = ["?" if d < 0 else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def shape_fits(shape: Sequence[int], wanted: Sequence[int]) -> bool:
    """Whether an array's C{shape} fits a spec's: the same rank, and the same size in
    every dimension the spec fixes (a negative one takes any size)."""
    return len(shape) == len(wanted) and all(
        want < 0 or want == got for want, got in zip(wanted, shape, strict=True))


_NAMES: dict[Any, str] = {}
"""Dtype names by dtype or by spec text, worked out once: numpy builds C{dtype.name} in
Python on every access, and a run checks every input's."""


def _name_of(dtype: np.dtype[Any]) -> str:
    try:
        return _NAMES[dtype]
    except KeyError:
        name = _NAMES[dtype] = dtype.name
        return name


def _canonical(text: str) -> str:
    """The travelled name for a spec's dtype text; text that is none is kept as it is."""
    try:
        return _NAMES[text]
    except (KeyError, TypeError):
        pass
    try:
        name = parse_dtype(text).name
    except ValueError:
        return text
    _NAMES[text] = name
    return name


@attrs.frozen
class TensorSpec:
    """A tensor a model takes or gives: a negative dimension in C{shape} means any size."""

    name: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    dtype: str

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> list[TensorSpec]:
        """Specs from the wire's rows (C{name}, C{shape}, C{dtype}), in their order."""
        return [cls(row["name"], row["shape"], row["dtype"]) for row in rows]

    def describe(self) -> str:
        """E.g. C{float32 (?, 3, 224, 224)}: '?' is a dimension of any size."""
        return f"{self.dtype} {shape_text(self.shape)}"

    def check(self, array: np.ndarray, model: str) -> None:
        """Raise L{TensorMismatch} naming this tensor if C{array} does not fit it."""
        if _name_of(array.dtype) != _canonical(self.dtype):
            raise TensorMismatch(
                f"Input {self.name!r} of model {model} is {array.dtype.name} but the model"
                f" expects {self.dtype}; convert it with .astype({self.dtype!r})."
            )
        if not shape_fits(array.shape, self.shape):
            raise TensorMismatch(
                f"Input {self.name!r} of model {model} has shape {shape_text(array.shape)}"
                f" but the model expects {shape_text(self.shape)} ('?' is any size);"
                " reshape it or pass the right array."
            )


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, as a flat memoryview of unsigned bytes."""
    flat: Any = array.reshape(-1).view(np.uint8)
    return memoryview(flat)


def tensor_rows(names: Sequence[str], arrays: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """The wire's description of C-contiguous arrays: what their byte runs will hold."""
    return [
        {"name": name, "dtype": _name_of(a.dtype), "shape": list(a.shape), "nbytes": a.nbytes}
        for name, a in zip(names, arrays, strict=True)
    ]


def empty_tensors(rows: Sequence[Mapping[str, Any]], what: str = "output") -> list[np.ndarray]:
    """Uninitialised arrays for described tensors, for their byte runs to fill; a
    ValueError saying which C{what} is wrong when a row names no carried dtype, has a
    negative dimension, or announces a byte count that its dtype and shape do not take.
    Sizes are checked before anything is allocated."""
    arrays: list[np.ndarray] = []
    for row in rows:
        try:
            dtype = parse_dtype(row["dtype"])
            shape = tuple(int(d) for d in row["shape"])
            if any(d < 0 for d in shape):
                raise ValueError("a negative dimension")
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{what} {row['name']!r} has dtype {row['dtype']!r} or shape"
                f" {row['shape']!r} that numpy cannot make ({e})") from None
        size = math.prod(shape) * dtype.itemsize  # exact: int64 would wrap
        if size != row["nbytes"]:
            raise ValueError(
                f"{what} {row['name']!r} is announced as {row['nbytes']} bytes,"
                f" but {row['dtype']} {shape_text(row['shape'])} is {size}")
        arrays.append(np.empty(shape, dtype))
    return arrays
