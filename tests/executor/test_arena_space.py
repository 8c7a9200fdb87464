"""Arena pages are reserved before they are written; a reservation that cannot be had is
a sentence with the free and needed sizes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from compassd.executor.arena_space import ArenaSpace, OutOfSharedMemory, describe_shortage


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_reserved_range_has_its_pages_and_is_not_reserved_twice(tmp_path: Path) -> None:
    path = tmp_path / "compass-arena-x"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    space = ArenaSpace(path)
    assert _allocated(path) == 0
    space.reserve(0, 1 << 20)
    assert _allocated(path) >= 1 << 20
    assert (space.start, space.end) == (0, 1 << 20)
    space.reserve(4096, 8192)  # inside: nothing to do
    assert (space.start, space.end) == (0, 1 << 20)
    space.reserve(1 << 20, 2 << 20)  # adjacent: the range grows
    assert (space.start, space.end) == (0, 2 << 20)
    space.reserve(6 << 20, 7 << 20)  # apart: the newer range is remembered
    assert (space.start, space.end) == (6 << 20, 7 << 20)
    assert _allocated(path) >= 3 << 20


def test_a_reservation_that_cannot_be_had_says_how_much_is_free_and_needed(
    tmp_path: Path
) -> None:
    path = tmp_path / "compass-arena-x"
    path.write_bytes(b"")
    space = ArenaSpace(path)
    with pytest.raises(OutOfSharedMemory) as caught:
        space.reserve(0, 1 << 60)
    said = str(caught.value)
    assert re.search(r"has \d+ MiB free; this run needs 1099511627776 MiB more", said), said
    assert (space.start, space.end) == (0, 0)


def test_the_sentence_names_the_place_and_both_sizes() -> None:
    said = describe_shortage("/dev/shm", 3 << 20, 24 << 20)
    assert said.startswith("The board's shared memory (/dev/shm) has 3.0 MiB free;"
                           " this run needs 24 MiB more.")
