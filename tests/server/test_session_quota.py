"""A session's quota in bytes, files and folders, and depth, counted as files come and go:
an upload is checked by looking only along its own path, never by walking the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compassd.protocol.errors import LimitExceeded, NoSuchFile, PathRefused
from compassd.server.modelcache import ModelCache, store_cached
from compassd.server.sessiondir import SessionDirectory
from compassd.server.upload import UploadSink


def store(directory: SessionDirectory, relpath: str, data: bytes = b"") -> None:
    """Store C{data} at C{relpath} as an upload does: reserve, write, commit, release."""
    token = object()
    directory.reserve(token, len(data), relpath)
    try:
        partial, file = directory.new_partial()
        with file:
            file.write(data)
        directory.commit(partial, relpath)
    finally:
        directory.release(token)


@pytest.fixture
def small(tmp_path: Path) -> SessionDirectory:
    return SessionDirectory.create(tmp_path / "work", max_upload=1000, session="q",
                                   max_entries=5, max_depth=3)


def test_files_and_the_folders_their_paths_make_count_against_the_entry_limit(
    small: SessionDirectory,
) -> None:
    store(small, "a/b/c", b"1")
    store(small, "a/d", b"22")
    store(small, "a/b/e")
    assert small.entries() == 5 and small.used() == 3
    with pytest.raises(LimitExceeded, match=r"1 more files and folders.*holds 5 of the 5"):
        store(small, "f")
    store(small, "a/d", b"4444")  # replacing a file makes nothing new
    assert small.entries() == 5 and small.used() == 5
    assert sorted(os.listdir(small.files / "a")) == ["b", "d"]


def test_empty_files_count_as_entries(small: SessionDirectory) -> None:
    for name in "vwxyz":
        store(small, name)
    with pytest.raises(LimitExceeded, match="holds 5 of the 5"):
        store(small, "one-more")
    assert small.used() == 0 and len(os.listdir(small.files)) == 5


def test_removing_files_and_folders_gives_back_bytes_and_entries(
    small: SessionDirectory,
) -> None:
    store(small, "a/b/c", b"123")
    store(small, "a/b/e", b"45")
    store(small, "top", b"6")
    assert (small.entries(), small.used()) == (5, 6)
    small.remove("a/b")
    assert (small.entries(), small.used()) == (2, 1)
    small.remove("top")
    assert (small.entries(), small.used()) == (1, 0)
    store(small, "x/y/z", b"7")
    assert small.entries() == 4


def test_a_path_deeper_than_the_limit_is_refused_before_anything_is_made(
    small: SessionDirectory,
) -> None:
    store(small, "a/b/c/file")  # three folders deep: the limit
    small.remove("a")
    with pytest.raises(PathRefused, match="4 folders deep; a session allows 3"):
        store(small, "a/b/c/d/file")
    assert os.listdir(small.files) == [] and small.entries() == 0


def test_uploads_under_way_hold_their_entries(small: SessionDirectory) -> None:
    first, second = object(), object()
    small.reserve(first, 10, "a/b/c")  # 3 new entries
    with pytest.raises(LimitExceeded, match="3 more files and folders.*holds 3 of the 5"):
        small.reserve(second, 10, "d/e/f")
    small.release(first)
    small.reserve(second, 10, "d/e/f")
    assert small.entries() == 3


def test_uploads_and_the_model_cache_are_counted_without_walking_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = SessionDirectory.create(tmp_path / "work", max_upload=10**6, session="w")
    for i in range(50):
        store(directory, f"layer{i % 5}/weights{i}.bin", b"x" * 10)

    def walked(*args: object, **kw: object) -> object:
        raise AssertionError("the quota walked the session directory")

    monkeypatch.setattr(os, "walk", walked)
    monkeypatch.setattr(os, "scandir", walked)
    data = b"model bytes"
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    sink = UploadSink.start(directory, "model.onnx", len(data), digest)
    sink(data)
    sink.finish()
    assert directory.used() == 500 + len(data)
    assert directory.entries() == 5 + 50 + 1
    monkeypatch.undo()
    cache = ModelCache.open(tmp_path / "cache", 10**6)
    cache.add(directory.files / "model.onnx", digest)
    monkeypatch.setattr(os, "walk", walked)
    assert store_cached(cache, directory, "again/model.onnx", len(data), digest)
    assert directory.used() == 500 + 2 * len(data)
    assert directory.entries() == 5 + 50 + 3


def test_an_upload_refused_for_entries_writes_nothing(small: SessionDirectory) -> None:
    for name in "vwxyz":
        store(small, name)
    import hashlib

    with pytest.raises(LimitExceeded):
        UploadSink.start(small, "deep/new", 1, hashlib.sha256(b"1").hexdigest())
    assert os.listdir(small.partial) == []
    assert sorted(os.listdir(small.files)) == list("vwxyz")


def _real(directory: SessionDirectory) -> tuple[int, int]:
    """The bytes of regular files and the entries under the client's area, walked."""
    size = entries = 0
    for folder, dirs, names in os.walk(directory.files):
        entries += len(dirs) + len(names)
        size += sum(os.lstat(os.path.join(folder, n)).st_size for n in names)
    return size, entries


PARTS = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(PARTS, min_size=1, max_size=5).map("/".join)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["store", "remove"]), PATHS,
                          st.integers(0, 300)), max_size=30))
def test_the_counts_always_match_the_tree_and_never_pass_the_limits(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]],
) -> None:
    directory = SessionDirectory.create(tmp_path_factory.mktemp("fuzz"), max_upload=1000,
                                        max_entries=8, max_depth=3)
    for op, path, size in ops:
        try:
            if op == "store":
                store(directory, path, b"x" * size)
            else:
                directory.remove(path)
        except (LimitExceeded, PathRefused, NoSuchFile):
            pass
        assert (directory.used(), directory.entries()) == _real(directory)
        assert directory.used() <= 1000 and directory.entries() <= 8


def test_a_path_through_a_file_is_no_such_file_for_remove_and_listdir(
    small: SessionDirectory,
) -> None:
    store(small, "a", b"1")
    with pytest.raises(NoSuchFile):
        small.remove("a/b")
    with pytest.raises(NoSuchFile):
        small.listdir("a/b")
    assert (small.entries(), small.used()) == (1, 1)
