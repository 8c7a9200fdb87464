"""Write fake ``aipu.bin`` graphs that the fake driver (``fake_aipudrv.c``) loads.

A fake graph is a little-endian ELF32 file with ``e_type`` 2, ``e_machine`` 0x29A and
``e_version`` 1, a ``.text`` section and a ``.note.aipu`` section, so it goes through the
same header checks as a real v3x graph. The notes inside ``.note.aipu`` are:

- ``compilermsg``: file version, build version, device word, flags. The device word says
  which target the graph was built for (``X2_1204`` by default) and the fake driver checks
  it against its own device (``FAKE_AIPU_TARGET``);
- ``fakeio``: the tensor descriptors (type, byte size, scale, zero point, data type);
- ``fakebehav``: what a job does (see ``BEHAVIOURS``) and a delay in milliseconds;
- ``extra_weight_name``: extra weight files the driver must find at load time;
- ``fakegate``: a file whose existence releases the job (tests decide when a job ends).

The switches let tests build broken files too (wrong machine, no ``.text``...).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Driver data types (aipu_data_type_t), by numpy dtype name where one matches.
DATA_TYPES = {
    "none": 0x0,
    "bool": 0x1,
    "uint8": 0x2,
    "int8": 0x3,
    "uint16": 0x4,
    "int16": 0x5,
    "uint32": 0x6,
    "int32": 0x7,
    "uint64": 0x8,
    "int64": 0x9,
    "float16": 0xA,
    "float32": 0xB,
    "float64": 0xC,
    "bfloat16": 0xD,
    "aligned_u4": 0x12,
    "aligned_s4": 0x13,
    "aligned_u12": 0x14,
    "aligned_s12": 0x15,
    "compact_u4": 0x20,
    "compact_s4": 0x21,
    "compact_u12": 0x22,
    "compact_s12": 0x23,
}

# Tensor types (aipu_tensor_type_t).
TENSOR_TYPES = {
    "input": 0,
    "output": 1,
    "inter_dump": 2,
    "printf": 3,
    "profiler": 4,
    "out_tensor_shape": 7,
}

# Job behaviours understood by the fake driver. "sleep" is identity after delay_ms.
BEHAVIOURS = {
    "identity": 0,
    "sleep": 0,
    "add": 1,
    "exception": 2,
    "hang": 3,
    "crash": 4,
}


@dataclass(frozen=True)
class Tensor:
    """One tensor descriptor: byte size, data type (a DATA_TYPES name or a raw code)."""

    size: int
    dtype: str | int = "int8"
    scale: float = 1.0
    zero_point: int = 0
    kind: str = ""  # set by graph_bytes from the list the tensor is in, unless given

    @property
    def code(self) -> int:
        return self.dtype if isinstance(self.dtype, int) else DATA_TYPES[self.dtype]


def device_word(target: str) -> int:
    """The compilermsg device word of a target name such as "X2_1204" or "X3P_1304"."""
    m = re.fullmatch(r"([ZX])(\d)([PS]?)_(\d{4})", target)
    if m is None:
        raise ValueError(f"not a target name: {target!r}")
    family, number, revision, config = m.groups()
    isa = int(number) if family == "Z" else int(number) + 3
    rev = {"": 0, "P": 1, "S": 2}[revision]
    return rev << 28 | isa << 16 | int(config)


def _note(name: str, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(raw), len(desc), 1) + pad(raw) + pad(desc)


def graph_bytes(
    inputs: Sequence[Tensor | int],
    outputs: Sequence[Tensor | int],
    *,
    behaviour: str = "identity",
    value: int = 0,
    delay_ms: int = 0,
    target: str | None = "X2_1204",
    device: int | None = None,
    build_version: int = 0x000B0401,
    extra_weights: Sequence[str] = (),
    gate: str | os.PathLike[str] | None = None,
    other_tensors: Sequence[Tensor] = (),
    e_type: int = 2,
    e_machine: int = 0x29A,
    e_version: int = 1,
    with_text: bool = True,
    with_note: bool = True,
    with_io: bool = True,
) -> bytes:
    """Build a fake graph. Plain ints in ``inputs``/``outputs`` are int8 tensors of that size.

    ``behaviour`` is a BEHAVIOURS name; ``value`` is the constant for "add"; ``delay_ms``
    delays any behaviour ("sleep" is identity with a delay). With ``gate``, a job waits until
    that file exists before doing anything. ``other_tensors`` adds
    descriptors of other types (their ``kind`` must be set, e.g. "profiler"). ``target=None``
    leaves out the compilermsg note; ``device`` overrides its device word.
    """
    tensors: list[tuple[str, Tensor]] = []
    for kind, group in (("input", inputs), ("output", outputs)):
        for t in group:
            tensors.append((kind, t if isinstance(t, Tensor) else Tensor(int(t))))
    tensors += [(t.kind, t) for t in other_tensors]

    io = struct.pack("<I", len(tensors)) + b"".join(
        struct.pack("<IIfiI", TENSOR_TYPES[kind], t.size, t.scale, t.zero_point, t.code)
        for kind, t in tensors
    )
    notes = b""
    if target is not None or device is not None:
        word = device if device is not None else device_word(target or "")
        notes += _note("compilermsg", struct.pack("<IIII", 0x00010001, build_version, word, 0))
    if with_io:
        notes += _note("fakeio", io)
    notes += _note("fakebehav", struct.pack("<iiI", BEHAVIOURS[behaviour], value, delay_ms))
    if gate is not None:
        notes += _note("fakegate", os.fsencode(gate) + b"\0")
    if extra_weights:
        notes += _note("extra_weight_name", b"".join(n.encode() + b"\0" for n in extra_weights))

    sections: list[tuple[str, int, bytes]] = []  # name, sh_type, content
    if with_text:
        sections.append((".text", 1, b"\x00\x00\xa0\xe3" * 4))  # any bytes: never executed
    if with_note:
        sections.append((".note.aipu", 7, notes))  # SHT_NOTE
    names = [""] + [s[0] for s in sections] + [".shstrtab"]
    shstrtab = b"\0".join(n.encode() for n in names) + b"\0"
    name_offsets = [shstrtab.index(n.encode() + b"\0") if n else 0 for n in names]
    sections.append((".shstrtab", 3, shstrtab))

    body = b""
    headers = [b"\0" * 40]
    offset = 52
    for i, (_, sh_type, content) in enumerate(sections, start=1):
        headers.append(
            struct.pack(
                "<IIIIIIIIII",
                name_offsets[i],
                sh_type,
                0,
                0,
                offset + len(body),
                len(content),
                0,
                0,
                4,
                0,
            )
        )
        body += content + b"\0" * (-len(content) % 4)
    shoff = 52 + len(body)
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack(
        "<HHIIIIIHHHHHH",
        e_type,
        e_machine,
        e_version,
        0,
        0,
        shoff,
        0,
        52,
        0,
        0,
        40,
        len(headers),
        len(headers) - 1,
    )
    return header + body + b"".join(headers)


def write_graph(
    path: str | os.PathLike[str],
    inputs: Sequence[Tensor | int],
    outputs: Sequence[Tensor | int],
    **options: object,
) -> Path:
    """Write ``graph_bytes(inputs, outputs, **options)`` to ``path`` and return the path."""
    path = Path(path)
    path.write_bytes(graph_bytes(inputs, outputs, **options))  # type: ignore[arg-type]
    return path
