"""The model manifest: names, shapes and dtypes for an C{aipu} graph's tensors.

The NPU driver describes a graph's tensors by index, byte size and data type only. A
manifest, a small JSON file that travels with the graph (C{aipu.json} beside
C{aipu.bin}: the same name with C{.json}), names each tensor and gives its shape::

    {
      "inputs":  [{"name": "image", "dtype": "uint8", "shape": [1, 224, 224, 3]}],
      "outputs": [{"name": "scores", "dtype": "int8", "shape": [1, 1000]}]
    }

Rules, checked with errors that say which entry is wrong and why:

- C{inputs} and C{outputs} are lists with one entry per driver tensor, in index order;
- each entry has a C{name} (unique among the inputs, and among the outputs), a C{dtype}
  (a numpy name: C{bool}, C{int8}..C{uint64}, C{float16}, C{float32}, C{float64}) and a
  C{shape} of non-negative integers;
- the entry's byte size (product of the shape times the dtype's item size) must equal the
  driver's size for that tensor. The dtype may differ from the driver's (for example
  C{uint16} for a raw BF16 tensor); the bytes are passed through unchanged.

Without a manifest every tensor is a flat 1-D array of the driver's dtype
(C{input0}, C{input1}, ... and C{output0}, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..tensors import dtype_name, parse_dtype


class ManifestError(ValueError):
    """A manifest is not valid JSON, not of the documented form, or does not fit the graph."""


def _int_tuple(dims: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


@attrs.frozen
class TensorSpec:
    """What a model expects or gives: a name, a numpy dtype name and a shape (-1: any)."""

    name: str
    dtype: str
    shape: tuple[int, ...] = attrs.field(converter=_int_tuple)

    def to_amp(self) -> dict[str, Any]:
        """The spec as a row of L{compassd.protocol.session.SIGNATURE}."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @property
    def nbytes(self) -> int | None:
        """The byte size, or None when a dimension is open."""
        if any(d < 0 for d in self.shape):
            return None
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


@attrs.frozen
class Manifest:
    """A parsed, well-formed manifest (not yet checked against a graph: see L{bind})."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: str = "the manifest"


def _specs(data: dict[str, Any], kind: str, source: str) -> tuple[TensorSpec, ...]:
    entries = data.get(kind)
    if not isinstance(entries, list):
        raise ManifestError(f"{source} must have an {kind!r} list (one entry per tensor)")
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: {kind}[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} must be an object with name, dtype and shape")
        unknown = set(entry) - {"name", "dtype", "shape"}
        if unknown:
            raise ManifestError(
                f"{where} has unknown keys {sorted(unknown)}; use name, dtype, shape"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ManifestError(f"{where} needs a non-empty string 'name'")
        if name in seen:
            raise ManifestError(f"{where}: the name {name!r} is used twice among the {kind}")
        seen.add(name)
        dtype = entry.get("dtype")
        try:
            if not isinstance(dtype, str):
                raise TypeError
            dtype = parse_dtype(dtype).name
        except (TypeError, ValueError):
            raise ManifestError(
                f"{where} ({name!r}): 'dtype' must be a numpy dtype name such as"
                f" 'int8' or 'float32', not {dtype!r}"
            ) from None
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ManifestError(
                f"{where} ({name!r}): 'shape' must be a list of non-negative integers,"
                f" not {shape!r}"
            )
        specs.append(TensorSpec(name, dtype, shape))
    return tuple(specs)


def parse_manifest(text: str | bytes, source: str = "the manifest") -> Manifest:
    """Parse and check the form of a manifest; L{ManifestError} says what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source} must be a JSON object with 'inputs' and 'outputs'")
    unknown = set(data) - {"inputs", "outputs", "version"}
    if unknown:
        raise ManifestError(f"{source} has unknown keys {sorted(unknown)}")
    if data.get("version", 1) != 1:
        raise ManifestError(
            f"{source} has version {data['version']!r}; this compassd reads version 1"
        )
    return Manifest(_specs(data, "inputs", source), _specs(data, "outputs", source), source)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and parse a manifest file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"the manifest {path.name} cannot be read: {e.strerror}") from None
    return parse_manifest(text, f"the manifest {path.name}")


def manifest_path_for(model: str | os.PathLike[str]) -> Path:
    """Where a model's manifest lives by default: C{aipu.bin} → C{aipu.json}."""
    return Path(model).with_suffix(".json")


def bind(
    manifest: Manifest | None,
    inputs: Sequence[tuple[int, str]],
    outputs: Sequence[tuple[int, str]],
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The specs of a graph whose driver tensors are C{(byte size, dtype)} pairs.

    Without a manifest: flat arrays of the driver's dtype named C{input<i>}/C{output<i>}.
    With one: its specs, after checking the count and each byte size against the driver.
    """
    if manifest is None:
        return (
            [_flat(f"input{i}", size, dtype) for i, (size, dtype) in enumerate(inputs)],
            [_flat(f"output{i}", size, dtype) for i, (size, dtype) in enumerate(outputs)],
        )
    return (
        _match(manifest, "inputs", manifest.inputs, inputs),
        _match(manifest, "outputs", manifest.outputs, outputs),
    )


def _flat(name: str, size: int, dtype: str) -> TensorSpec:
    item = np.dtype(dtype).itemsize
    if size % item:  # not a whole number of items: hand over the raw bytes
        return TensorSpec(name, "uint8", (size,))
    return TensorSpec(name, dtype_name(np.dtype(dtype)), (size // item,))


def _match(
    manifest: Manifest,
    kind: str,
    specs: Sequence[TensorSpec],
    driver: Sequence[tuple[int, str]],
) -> list[TensorSpec]:
    if len(specs) != len(driver):
        raise ManifestError(
            f"{manifest.source} lists {len(specs)} {kind} but the graph has {len(driver)}"
        )
    for i, (spec, (size, _)) in enumerate(zip(specs, driver, strict=True)):
        if spec.nbytes != size:
            raise ManifestError(
                f"{manifest.source}: {kind}[{i}] ({spec.name!r}, {spec.describe()}) takes"
                f" {spec.nbytes} bytes, but the graph's tensor {i} has {size} bytes"
            )
    return list(specs)
