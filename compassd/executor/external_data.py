"""Where an ONNX model's tensors say their bytes are, checked before ONNX Runtime sees it.

An ONNX tensor may keep its data in another file (``data_location: EXTERNAL`` with an
``external_data`` entry ``location``). A model from a client could name ``/etc/passwd``,
``../../other-session/model.bin`` or a symlink out of its session directory and have
the board read it into a tensor whose outputs go back to the client. ONNX Runtime checks
this too in recent releases; compassd checks it itself, for every release: every
external location must name a regular file that, with symlinks resolved, lies inside the
session directory. Anything that cannot be parsed is refused, never let through.

The model is read with the protobuf wire format directly (no ``onnx`` package at run
time) through a memory map, so a 4 GiB model with inline weights costs no copy. Only the
messages that can hold tensors are walked: the graph and its nodes, their attributes and
subgraphs, sparse tensors, functions and training graphs.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator

from ..protocol.errors import ModelRejected

_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)

# message -> {field number: the message type of that (length-delimited) field}
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _FUNCTION: {7: _NODE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE,
                 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1
MAX_DEPTH = 64
"""Deepest nesting of messages (subgraphs in attributes) this reads; deeper is refused."""


class _Malformed(Exception):
    pass


def _varint(data: mmap.mmap | bytes, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise _Malformed("a varint runs past its message")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: mmap.mmap | bytes, start: int, end: int
            ) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for varints start is the
    value."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("a field has number 0")
        if wire == 0:
            value, at = _varint(data, at, end)
            yield number, wire, value, at
        elif wire == 1 or wire == 5:
            at += 8 if wire == 1 else 4
            if at > end:
                raise _Malformed("a fixed-size field runs past its message")
        elif wire == 2:
            length, at = _varint(data, at, end)
            if at + length > end:
                raise _Malformed("a field is longer than its message")
            yield number, wire, at, at + length
            at += length
        else:
            raise _Malformed(f"wire type {wire} (groups are not used by ONNX)")


def _text(data: mmap.mmap | bytes, start: int, end: int) -> str:
    try:
        return bytes(data[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a string is not UTF-8") from None


def _tensor(data: mmap.mmap | bytes, start: int, end: int
            ) -> tuple[str, bool, list[str]]:
    """A tensor's name, whether it is marked external, and every location it names."""
    name, external, locations = "", False, []
    for number, wire, a, b in _fields(data, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = _text(data, a, b)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = a == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = value = None
            for entry_number, entry_wire, c, d in _fields(data, a, b):
                if entry_wire == 2 and entry_number in (1, 2):
                    text = _text(data, c, d)
                    key, value = (text, value) if entry_number == 1 else (key, text)
            if key == "location":
                locations.append(value or "")
    return name, external, locations


def external_locations(data: mmap.mmap | bytes) -> list[tuple[str, str | None]]:
    """Every (tensor name, location) of a serialized ModelProto whose data is external;
    the location is None for a tensor marked external that names none."""
    found: list[tuple[str, str | None]] = []
    stack = [(_MODEL, 0, len(data), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if kind == _TENSOR:
            name, external, locations = _tensor(data, start, end)
            found.extend((name, location) for location in locations)
            if external and not locations:
                found.append((name, None))
            continue
        if depth >= MAX_DEPTH:
            raise _Malformed(f"messages are nested more than {MAX_DEPTH} deep")
        children = _CHILDREN[kind]
        for number, wire, a, b in _fields(data, start, end):
            child = children.get(number)
            if child is not None:
                if wire != 2:
                    raise _Malformed(f"field {number} is not a message")
                stack.append((child, a, b, depth + 1))
    return found


def check_external_data(model: str, session_dir: str, name: str | None = None) -> None:
    """Refuse (L{ModelRejected}) the ONNX file C{model} if any tensor's external data is
    not a regular file inside C{session_dir}, or if the file cannot be read as a model."""
    shown = name or os.path.basename(model)
    root = os.path.realpath(session_dir)
    base = os.path.dirname(os.path.realpath(model))
    try:
        with open(model, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelRejected(f"Model {shown} is an empty file; upload the model.")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                locations = external_locations(data)
    except OSError as e:
        raise ModelRejected(f"Model {shown} cannot be read: {e.strerror}.") from None
    except _Malformed as e:
        raise ModelRejected(
            f"Model {shown} is not a readable ONNX model ({e}); compassd checks every"
            " model's external data before loading it and refuses what it cannot read."
        ) from None
    for tensor, location in locations:
        where = f"tensor {tensor!r} of model {shown}"
        if not location:
            raise ModelRejected(f"The {where} keeps its data in an external file but names"
                                " none; save the model again with its data.")
        if "\0" in location or os.path.isabs(location):
            raise ModelRejected(
                f"The {where} reads its data from {location!r}, outside the session"
                " directory; external data must be files uploaded with the model, named"
                " relative to it.")
        full = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([full, root]) != root:
            raise ModelRejected(
                f"The {where} reads its data from {location!r}, which resolves outside the"
                " session directory; external data must be files uploaded with the model,"
                " named relative to it.")
        try:
            is_file = stat.S_ISREG(os.stat(full).st_mode)
        except OSError:
            is_file = False
        if not is_file:
            raise ModelRejected(
                f"The {where} reads its data from {location!r}, which is not a file in the"
                " session directory; upload it with the model.")
