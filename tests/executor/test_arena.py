"""The shared-memory arena and its pure slot allocator."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compassd.executor.arena import ALIGN, Arena, ArenaFull, Slot, SlotAllocator


def test_allocator_hands_out_aligned_ranges_and_reuses_freed_ones() -> None:
    a = SlotAllocator(1024)
    first = a.allocate(10)
    second = a.allocate(100)
    assert (first, second) == (0, 64)
    a.free(first)
    assert a.allocate(64) == 0
    with pytest.raises(ArenaFull, match="no free range of 2000 bytes"):
        a.allocate(2000)
    with pytest.raises(KeyError):
        a.free(5)


@given(
    st.integers(min_value=0, max_value=1 << 14),
    st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=3000)), max_size=60),
)
def test_allocated_slots_never_overlap_and_stay_inside_the_capacity(
    capacity: int, ops: list[tuple[bool, int]]
) -> None:
    a = SlotAllocator(capacity)
    live: dict[int, int] = {}
    for is_free, n in ops:
        if is_free and live:
            offset = sorted(live)[n % len(live)]
            a.free(offset)
            del live[offset]
            continue
        try:
            offset = a.allocate(n)
        except ArenaFull:
            continue
        assert offset % ALIGN == 0
        live[offset] = max(n, 1)
        spans = sorted((o, o + size) for o, size in live.items())
        reserved = [(o, o + size) for o, size in a.ranges()]
        for group in (spans, reserved):
            assert all(end <= capacity for _, end in group)
            assert all(prev[1] <= nxt[0] for prev, nxt in pairwise(group))


def test_a_tensor_round_trips_between_two_mappings_of_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "arena"
    with Arena.create(path, 4096) as server, Arena.attach(path, 4096) as executor:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        slot = server.put("x", x)
        assert slot == Slot("x", "float32", (3, 4), 0, 48)
        np.testing.assert_array_equal(executor.read(slot), x)
        view = executor.read(slot, copy=False)
        copy = executor.read(slot)
        server.write("x", x + 1, slot.offset)
        np.testing.assert_array_equal(view, x + 1)  # a view follows the file
        np.testing.assert_array_equal(copy, x)  # a copy does not
        del view


def test_non_native_and_non_contiguous_arrays_are_written_as_native_c_order(tmp_path: Path) -> None:
    with Arena.create(tmp_path / "a", 1024) as arena:
        big_endian = np.arange(6, dtype=">i4").reshape(2, 3).T
        slot = arena.put("t", big_endian)
        assert slot.dtype == "int32" and slot.shape == (3, 2)
        np.testing.assert_array_equal(arena.read(slot), big_endian)


def test_bad_slots_and_full_arena_are_refused_with_sentences(tmp_path: Path) -> None:
    with Arena.create(tmp_path / "a", 128) as arena:
        with pytest.raises(ValueError, match="outside the arena of 128 bytes"):
            arena.read(Slot("x", "int8", (64,), 100, 64))
        with pytest.raises(ValueError, match="takes 8 bytes, but its slot has 4"):
            arena.read(Slot("x", "int16", (4,), 0, 4))
        with pytest.raises(ArenaFull, match="only 64 bytes from offset 64"):
            arena.write_all([("a", np.zeros(8)), ("b", np.zeros(8))], 64, 1000)
        with pytest.raises(ValueError, match="cannot cross the arena"):
            arena.put("s", np.array(["text"]))
    with pytest.raises(ValueError, match="has 128 bytes, not the 256 announced"):
        Arena.attach(tmp_path / "a", 256)


def test_zero_sized_tensors_and_write_all_layout(tmp_path: Path) -> None:
    with Arena.create(tmp_path / "a", 1024) as arena:
        slots = arena.write_all(
            [("e", np.zeros((0, 3), np.int8)), ("f", np.ones(3, np.uint8))], 10, 500
        )
        assert [s.offset for s in slots] == [64, 64]
        assert arena.read(slots[0]).shape == (0, 3)
        np.testing.assert_array_equal(arena.read(slots[1]), np.ones(3, np.uint8))
