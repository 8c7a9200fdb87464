"""The shared-memory arena: where tensors cross between the server and its executor.

The arena is one file of a fixed size that both processes map with C{mmap}. The server
writes input tensors into it and sends the executor only their places (L{Slot}s); the
executor reads them, runs the model and writes the outputs into the same file. Nothing
large travels through the AMP pipe.

L{SlotAllocator} is the pure part: it hands out 64-byte-aligned byte ranges of a fixed
capacity and takes them back, with no file and no I/O, so it is tested on its own.
L{Arena} is the file and its mapping.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from ..tensors import dtype_name, parse_dtype

ALIGN = 64
"""Every slot starts at a multiple of this many bytes (a cache line; SIMD loads)."""


def align_up(n: int, alignment: int = ALIGN) -> int:
    """The smallest multiple of C{alignment} that is at least C{n}."""
    return -(-n // alignment) * alignment


class ArenaFull(Exception):
    """There is no free range in the arena big enough for a tensor."""


def _int_tuple(dims: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


@attrs.frozen
class Slot:
    """A tensor in the arena: its name, dtype name, shape, and byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...] = attrs.field(converter=_int_tuple)
    offset: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def to_amp(self) -> dict[str, Any]:
        """The slot as a row of L{compassd.protocol.executor.SLOT}."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
        }

    @classmethod
    def from_amp(cls, row: Mapping[str, Any]) -> Slot:
        return cls(row["name"], row["dtype"], row["shape"], row["offset"], row["nbytes"])


@attrs.define
class SlotAllocator:
    """First-fit allocation of aligned byte ranges in C{[0, capacity)}.

    Pure bookkeeping: C{allocate} returns an offset (a multiple of L{ALIGN}) of a free
    range of at least C{nbytes}, C{free} returns it. Ranges handed out never overlap and
    never pass C{capacity}. Zero-byte tensors get a range of one alignment unit so each
    slot has its own offset.
    """

    capacity: int
    _used: dict[int, int] = attrs.field(factory=dict, init=False)  # offset -> reserved size

    def allocate(self, nbytes: int) -> int:
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} bytes")
        size = align_up(max(nbytes, 1))
        cursor = 0
        for offset in sorted(self._used):
            if offset - cursor >= size:
                break
            cursor = offset + self._used[offset]
        if cursor + size > self.capacity:
            raise ArenaFull(
                f"the arena has no free range of {nbytes} bytes"
                f" ({self.in_use} of {self.capacity} bytes are in use)"
            )
        self._used[cursor] = size
        return cursor

    def free(self, offset: int) -> None:
        if self._used.pop(offset, None) is None:
            raise KeyError(f"no slot is allocated at offset {offset}")

    def reset(self) -> None:
        self._used.clear()

    @property
    def in_use(self) -> int:
        """Bytes reserved (alignment included)."""
        return sum(self._used.values())

    def ranges(self) -> list[tuple[int, int]]:
        """The reserved ranges as (offset, size), by offset."""
        return sorted(self._used.items())


class Arena:
    """A file of C{size} bytes mapped shared into this process.

    The server makes it with L{Arena.create} (mode 0600, in the session directory or
    C{/dev/shm}) and the executor maps the same file with L{Arena.attach}. Both sides see
    each other's writes at once (one C{MAP_SHARED} mapping of one file).
    """

    def __init__(self, path: str, size: int, fd: int) -> None:
        self.path = path
        self.size = size
        try:
            self._map: mmap.mmap | None = (
                mmap.mmap(fd, size, mmap.MAP_SHARED) if size else None)
        finally:
            os.close(fd)
        self._closed = False
        self.allocator = SlotAllocator(size)

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int) -> Arena:
        """Make a new arena file (it must not exist) of C{size} bytes and map it."""
        if size < 0:
            raise ValueError(f"an arena cannot have {size} bytes")
        path = os.fspath(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            return cls(path, size, fd)  # it closes the descriptor in every case
        except BaseException:
            os.unlink(path)
            raise

    @classmethod
    def attach(cls, path: str | os.PathLike[str], size: int) -> Arena:
        """Map an existing arena file, which must be exactly C{size} bytes long."""
        path = os.fspath(path)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        actual = os.fstat(fd).st_size
        if actual != size:
            os.close(fd)
            raise ValueError(f"the arena {path} has {actual} bytes, not the {size} announced")
        return cls(path, size, fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap the file (views from L{read} with C{copy=False} must be gone by then)."""
        self._closed = True
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bytes(self, offset: int, nbytes: int) -> memoryview:
        if self._closed:
            raise ValueError(f"the arena {self.path} is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(
                f"bytes {offset}..{offset + nbytes} are outside the arena of {self.size} bytes"
            )
        if nbytes == 0:
            return memoryview(bytearray(0))
        assert self._map is not None
        return memoryview(self._map)[offset : offset + nbytes]

    def view(self) -> memoryview:
        """A writable view of the whole arena (release it before L{close})."""
        return self._bytes(0, self.size)

    def read_bytes(self, offset: int, nbytes: int) -> bytes:
        """A copy of C{nbytes} bytes from C{offset}."""
        view = self._bytes(offset, nbytes)
        try:
            return bytes(view)
        finally:
            view.release()

    def write(self, name: str, array: Any, offset: int) -> Slot:
        """Copy C{array} into the arena at C{offset}; return its slot.

        The array is made C-contiguous in native byte order first; the range must lie
        inside the arena (a ValueError that says where otherwise).
        """
        a = np.asarray(array)
        dt = parse_dtype(dtype_name(a.dtype))
        a = np.ascontiguousarray(a, dtype=dt)
        view = self._bytes(offset, a.nbytes)
        if a.nbytes:
            np.frombuffer(view, dtype=np.uint8)[:] = a.reshape(-1).view(np.uint8)
        view.release()
        return Slot(name, dt.name, a.shape, offset, a.nbytes)

    def put(self, name: str, array: Any) -> Slot:
        """Allocate a slot for C{array} and write it there (L{ArenaFull} if it cannot fit)."""
        a = np.asarray(array)
        offset = self.allocator.allocate(a.nbytes)
        try:
            return self.write(name, a, offset)
        except BaseException:
            self.allocator.free(offset)
            raise

    def release(self, slot: Slot) -> None:
        """Give back a slot that L{put} allocated."""
        self.allocator.free(slot.offset)

    def read(self, slot: Slot, *, copy: bool = True) -> NDArray[Any]:
        """The tensor in C{slot}.

        With C{copy=True} (the default) the array owns its memory and stays valid after the
        arena is closed or overwritten. With C{copy=False} it is a writable view of the
        mapping: no copy, but it changes when the range is rewritten and must not be used
        after L{close}.
        """
        dt = parse_dtype(slot.dtype)
        shape = tuple(slot.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"tensor {slot.name!r} has a negative dimension in {shape}")
        expected = math.prod(shape) * dt.itemsize  # exact: int64 would wrap
        if expected != slot.nbytes:
            raise ValueError(
                f"tensor {slot.name!r}: {slot.dtype} with shape {shape} takes {expected} bytes,"
                f" but its slot has {slot.nbytes}"
            )
        view = self._bytes(slot.offset, slot.nbytes)
        if slot.nbytes == 0:
            return np.zeros(shape, dtype=dt)
        array = np.frombuffer(view, dtype=dt).reshape(shape)
        return array.copy() if copy else array

    def write_all(
        self, arrays: Sequence[tuple[str, Any]], offset: int, capacity: int
    ) -> list[Slot]:
        """Write named arrays one after the other (each aligned) in C{[offset, offset+capacity)}.

        Raises L{ArenaFull} with the sizes when they do not all fit.
        """
        cursor = align_up(offset)
        planned: list[tuple[str, NDArray[Any], int]] = []
        for name, array in arrays:
            a = np.asarray(array)
            planned.append((name, a, cursor))
            cursor = align_up(cursor + a.nbytes)
        need = sum(a.nbytes for _, a, _ in planned)
        end = planned[-1][2] + planned[-1][1].nbytes if planned else offset
        if end > offset + capacity or end > self.size:
            room = max(0, min(capacity, self.size - offset))
            raise ArenaFull(
                f"the outputs need {need} bytes ({end - offset} with alignment), but only"
                f" {room} bytes from offset {offset} were given for them"
            )
        return [self.write(name, a, at) for name, a, at in planned]
