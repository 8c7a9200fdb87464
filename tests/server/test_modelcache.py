"""The board's model cache: verified content only, found only by SHA-256 and size, kept
within its size limit, checked on every use, never left half made."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from compassd.protocol.errors import ChecksumMismatch, LimitExceeded, PathRefused
from compassd.server.modelcache import ModelCache, default_limit, store_cached
from compassd.server.sessiondir import SessionDirectory
from compassd.server.upload import UploadSink


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


def session(work: Path, name: str, quota: int = 10_000) -> SessionDirectory:
    return SessionDirectory.create(work, max_upload=quota, session=name)


def upload(directory: SessionDirectory, cache: ModelCache, relpath: str, data: bytes,
           announced: str | None = None) -> Path:
    """What the board's upload responder does: receive, verify, store, then cache."""
    sink = UploadSink.start(directory, relpath, len(data), announced or sha(data))
    sink(data)
    stored = sink.finish()
    cache.add(stored, sink.sha256)
    return stored


def test_a_verified_upload_is_linked_into_another_session_without_its_bytes(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    first, second = session(work, "a"), session(work, "b")
    data = b"model" * 100
    upload(first, cache, "m.bin", data)
    assert store_cached(cache, second, "models/m.bin", len(data), sha(data))
    stored = second.files / "models" / "m.bin"
    assert stored.read_bytes() == data
    assert os.listdir(second.partial) == []
    assert second.used() == len(data)  # it counts against the session's quota
    assert cache.hits == 1
    first.destroy()  # the first session ending takes nothing from the second
    assert stored.read_bytes() == data
    assert store_cached(cache, session(work, "c"), "m.bin", len(data), sha(data))


def test_a_miss_stores_nothing_and_the_size_must_match_too(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    first, second = session(work, "a"), session(work, "b")
    data = b"weights" * 10
    upload(first, cache, "m.bin", data)
    assert not store_cached(cache, second, "m.bin", len(data), sha(b"something else"))
    assert not store_cached(cache, second, "m.bin", len(data) + 1, sha(data))
    assert second.listdir() == []
    assert cache.misses == 2


def test_a_hit_is_refused_over_the_quota_and_on_a_refused_path(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    data = b"x" * 500
    upload(session(work, "a"), cache, "m.bin", data)
    small = session(work, "b", quota=100)
    with pytest.raises(LimitExceeded):
        store_cached(cache, small, "m.bin", len(data), sha(data))
    with pytest.raises(PathRefused):
        store_cached(cache, session(work, "c"), "../escape", len(data), sha(data))
    assert small.listdir() == [] and os.listdir(small.partial) == []


def test_the_least_recently_used_entry_is_evicted_under_the_size_limit(work):
    cache = ModelCache.open(work / "cache", 25)
    directory = session(work, "a")
    a, b, c = b"a" * 10, b"b" * 10, b"c" * 10
    upload(directory, cache, "a", a)
    upload(directory, cache, "b", b)
    assert cache.lookup(sha(a), 10) is not None  # a is now used more recently than b
    upload(directory, cache, "c", c)
    assert sha(b) not in cache and sha(a) in cache and sha(c) in cache
    assert cache.used == 20 and sorted(os.listdir(cache.root)) == sorted([sha(a), sha(c)])
    upload(directory, cache, "big", b"d" * 26)  # larger than the whole cache: not kept
    assert len(cache) == 2 and (directory.files / "big").read_bytes() == b"d" * 26


def test_a_corrupted_entry_is_dropped_never_served(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    first = session(work, "a")
    data = b"good model bytes"
    stored = upload(first, cache, "m.bin", data)
    # The session's file and the entry share an inode: write through the session's link.
    os.chmod(stored, 0o600)
    stored.write_bytes(b"evil model bytes")
    second = session(work, "b")
    assert not store_cached(cache, second, "m.bin", len(data), sha(data))
    assert second.listdir() == []
    assert sha(data) not in cache and os.listdir(cache.root) == []


def test_an_entry_touched_but_unchanged_is_hashed_again_and_kept(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    data = b"same bytes"
    stored = upload(session(work, "a"), cache, "m.bin", data)
    os.utime(stored, ns=(1, 1))
    assert store_cached(cache, session(work, "b"), "m.bin", len(data), sha(data))


def test_entries_left_by_an_earlier_run_are_verified_on_first_use(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    good, bad = b"good" * 4, b"bad!" * 4
    upload(session(work, "a"), cache, "good", good)
    upload(session(work, "b"), cache, "bad", bad)
    (cache.root / "adding-0123").write_bytes(b"half made")
    entry = cache.root / sha(bad)
    os.chmod(entry, 0o600)
    entry.write_bytes(b"BAD!" * 4)
    again = ModelCache.open(work / "cache", 1 << 20)
    assert len(again) == 2 and not (cache.root / "adding-0123").exists()
    fresh = session(work, "c")
    assert store_cached(again, fresh, "good", len(good), sha(good))
    assert not store_cached(again, fresh, "bad", len(bad), sha(bad))
    assert (fresh.files / "good").read_bytes() == good and not (fresh.files / "bad").exists()
    assert sorted(os.listdir(again.root)) == [sha(good)]


def test_two_sessions_uploading_the_same_content_at_once_leave_one_entry(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    one, two = session(work, "a"), session(work, "b")
    data = bytes(range(256)) * 8
    sinks = [UploadSink.start(d, "m.bin", len(data), sha(data)) for d in (one, two)]
    for at in range(0, len(data), 300):  # interleaved, piece by piece
        for sink in sinks:
            sink(data[at:at + 300])
    for sink in sinks:
        cache.add(sink.finish(), sink.sha256)
    assert os.listdir(cache.root) == [sha(data)] and cache.used == len(data)
    for directory in (one, two):
        assert (directory.files / "m.bin").read_bytes() == data
    assert store_cached(cache, session(work, "c"), "m.bin", len(data), sha(data))


def test_a_client_that_lies_about_a_digest_gets_nothing(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    secret = b"another user's model"
    upload(session(work, "a"), cache, "secret.bin", secret)
    liar = session(work, "b")
    # Announcing the secret's digest with other bytes is refused; nothing is cached.
    with pytest.raises(ChecksumMismatch):
        upload(liar, cache, "m.bin", b"x" * len(secret), announced=sha(secret))
    assert sorted(os.listdir(cache.root)) == [sha(secret)]
    assert (cache.root / sha(secret)).read_bytes() == secret
    # A digest it made up (or the wrong size for a real one) finds nothing.
    assert not store_cached(cache, liar, "m.bin", len(secret), sha(b"guess"))
    assert not store_cached(cache, liar, "m.bin", 3, sha(secret))
    assert liar.listdir() == []


def test_a_session_that_ends_mid_upload_leaves_no_cache_entry(work):
    cache = ModelCache.open(work / "cache", 1 << 20)
    directory = session(work, "a")
    data = b"m" * 1000
    sink = UploadSink.start(directory, "m.bin", len(data), sha(data))
    sink(data[:400])
    sink.abort()
    directory.destroy()
    assert len(cache) == 0 and os.listdir(cache.root) == []
    assert not store_cached(cache, session(work, "b"), "m.bin", len(data), sha(data))


def test_a_zero_limit_keeps_nothing_and_the_default_is_a_share_of_the_disk(work):
    cache = ModelCache.open(work / "cache", 0)
    upload(session(work, "a"), cache, "m", b"abc")
    assert len(cache) == 0
    info = os.statvfs(work)
    assert default_limit(work / "not" / "made") == info.f_blocks * info.f_frsize // 4


def test_cache_size_option_takes_sizes_and_zero_and_defaults_to_none() -> None:
    from compassd.server.tap import Options

    def parse(*extra: str) -> Options:
        options = Options()
        options.parseOptions(["--key", "k", "--workdir", "/tmp/x", *extra])
        return options

    assert parse()["cache-size"] is None
    assert parse("--cache-size", "2G")["cache-size"] == 2 << 30
    assert parse("--cache-size", "0")["cache-size"] == 0


# --- checked and linked in a thread (what the board's use-cached does) ---------------


class HandRunner:
    """A thread runner whose jobs run only when the test says."""

    def __init__(self):
        self.jobs = []

    def __call__(self, function, *args):
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.jobs.append((function, args, d))
        return d

    def run_all(self):
        while self.jobs:
            function, args, d = self.jobs.pop(0)
            d.callback(function(*args))


def outcome_of(d):
    out = []
    d.addBoth(out.append)
    return out


def test_in_a_thread_a_hit_is_linked_and_a_corrupted_entry_dropped(work):
    from compassd.server.modelcache import store_cached_in_thread

    cache = ModelCache.open(work / "cache", 1 << 20)
    data = b"cached model"
    stored = upload(session(work, "a"), cache, "m.bin", data)
    runner = HandRunner()
    second = session(work, "b")
    got = outcome_of(store_cached_in_thread(cache, second, "m.bin", len(data), sha(data),
                                            runner))
    assert got == [] and second.used() == len(data)  # reserved while the thread works
    runner.run_all()
    assert got == [True] and (second.files / "m.bin").read_bytes() == data
    os.chmod(stored, 0o600)
    stored.write_bytes(b"evil model!!")  # same size, other bytes
    third = session(work, "c")
    got = outcome_of(store_cached_in_thread(cache, third, "m.bin", len(data), sha(data),
                                            runner))
    runner.run_all()  # hashed again in the thread: changed, so dropped
    assert got == [False] and third.listdir() == [] and third.used() == 0
    assert sha(data) not in cache and os.listdir(third.partial) == []


def test_in_a_thread_a_session_that_ends_meanwhile_gets_nothing(work):
    from compassd.protocol.errors import SessionEnded
    from compassd.server.modelcache import store_cached_in_thread

    cache = ModelCache.open(work / "cache", 1 << 20)
    data = b"cached model"
    upload(session(work, "a"), cache, "m.bin", data)
    runner = HandRunner()
    late = session(work, "b")
    ended = [False]
    got = outcome_of(store_cached_in_thread(cache, late, "m.bin", len(data), sha(data),
                                            runner, ended=lambda: ended[0]))
    ended[0] = True
    runner.run_all()
    assert got[0].check(SessionEnded)
    assert late.listdir() == [] and os.listdir(late.partial) == [] and late.used() == 0
    missing = outcome_of(store_cached_in_thread(cache, late, "m.bin", 3, sha(b"x"), runner))
    assert missing == [False] and not runner.jobs  # a miss needs no thread


def test_a_hit_over_a_file_of_the_session_removes_the_old_one_in_the_thread(work):
    from compassd.server.modelcache import store_cached_in_thread

    cache = ModelCache.open(work / "cache", 1 << 20)
    data = b"cached model"
    upload(session(work, "a"), cache, "m.bin", data)
    runner = HandRunner()
    second = session(work, "b")
    upload(second, cache, "m.bin", b"an older model, longer")
    got = outcome_of(store_cached_in_thread(cache, second, "m.bin", len(data), sha(data),
                                            runner))
    function, args, d = runner.jobs.pop(0)
    d.callback(function(*args))  # links the entry; storing it hands the old file on
    assert got == [True] and (second.files / "m.bin").read_bytes() == data
    assert second.used() == len(data)
    assert len(os.listdir(second.partial)) == 1, "the old file was not swapped out"
    assert len(runner.jobs) == 1
    runner.run_all()  # the thread removes it
    assert os.listdir(second.partial) == []
