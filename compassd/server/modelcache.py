"""The board's content-addressed cache of uploaded files, shared by its sessions.

A developer runs the same model again and again; each session used to upload it again.
Every verified upload is now also kept here under its SHA-256, and a client that names
the SHA-256 and size of a file it is about to send (L{compassd.protocol.session.UseCached})
gets it linked into its session directory at once, nothing sent.

Promises, each checked by the tests (C{tests/server/test_modelcache.py}):

- only verified content enters: L{ModelCache.add} is called with a file whose SHA-256
  the board computed itself while it arrived (L{compassd.server.upload.UploadSink}), so
  a client that announces a false digest is refused and stores nothing here; an upload
  that never finished (the session ended mid-upload) never reaches the cache;
- a session sees cached content only by naming its SHA-256 and size: there is no way to
  list the cache or reach it by a path;
- an entry is verified on use: its size, inode, mode and modification time are those
  recorded when its SHA-256 was last checked, or it is hashed again; one whose bytes no
  longer match is removed, never served (entries found at start are hashed on first use);
- the cache holds at most C{limit} bytes, evicting the least recently used entries;
  a file larger than the limit is not kept;
- two sessions storing the same content at once leave one entry;
- its methods may be called from several threads at once: L{store_cached_in_thread}
  (what the board's C{use-cached} responder calls) checks and links an entry in a
  thread, so re-hashing a large entry never holds up the reactor, and no lock is held
  while a file is hashed.

Entries are hard links (C{cache/<sha256>}, read-only) to the session's own file, so
adding costs no copy and a hit costs one link; they must live on the work directory's
file system. A session's file and the entry share an inode; the entry's recorded
fingerprint is what shows a change made through the session's link.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..hashing import InThread
from ..protocol.errors import SessionEnded
from .sessiondir import SessionDirectory, remove_quietly

log = Logger(namespace="compass.server")

_ENTRY = re.compile(r"^[0-9a-f]{64}$")

DEFAULT_SHARE = 0.25
"""The share of the work directory's file system the cache may hold by default."""


def default_limit(workdir: str | os.PathLike[str]) -> int:
    """A quarter of the size of the file system holding C{workdir} (or of the nearest
    existing folder above it)."""
    path = Path(workdir)
    while not path.exists() and path != path.parent:
        path = path.parent
    info = os.statvfs(path)
    return int(info.f_blocks * info.f_frsize * DEFAULT_SHARE)


def _fingerprint(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_size, info.st_ino, info.st_mtime_ns, stat.S_IMODE(info.st_mode))


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


@attrs.define(eq=False)
class ModelCache:
    """Files kept by SHA-256 under C{root}, at most C{limit} bytes (0: keep nothing)."""

    root: Path
    limit: int
    _entries: collections.OrderedDict[str, tuple[int, int, int, int] | None] = attrs.field(
        factory=collections.OrderedDict)
    """SHA-256 -> fingerprint when last verified (None: not verified yet), least
    recently used first."""
    _sizes: dict[str, int] = attrs.field(factory=dict)
    hits: int = 0
    misses: int = 0
    _lock: threading.RLock = attrs.field(factory=threading.RLock)
    """Held while the entries are read or changed (never while a file is hashed)."""

    @classmethod
    def open(cls, root: str | os.PathLike[str], limit: int) -> ModelCache:
        """The cache in C{root} (made, mode 0700, if missing): entries left by an earlier
        run are kept (oldest modification first, verified on first use), anything else
        there (a link half made) is removed."""
        path = Path(root)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        cache = cls(path, max(0, limit))
        found = []
        for entry in os.scandir(path):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if _ENTRY.match(entry.name) and stat.S_ISREG(info.st_mode):
                found.append((info.st_mtime_ns, entry.name, info.st_size))
            else:
                _unlink(Path(entry.path))
        for _, name, size in sorted(found):
            cache._entries[name] = None
            cache._sizes[name] = size
        cache._evict(0)
        return cache

    @property
    def used(self) -> int:
        """Bytes the entries hold."""
        with self._lock:
            return sum(self._sizes.values())

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, path: Path, sha256: str) -> bool:
        """Keep the file at C{path}, whose SHA-256 the board checked, as C{sha256}; say
        whether it is kept. Never raises for a disk problem (the upload stands anyway)."""
        if not _ENTRY.match(sha256):
            raise ValueError(f"{sha256!r} is not a lower-case hex SHA-256.")
        with self._lock:
            try:
                info = os.stat(path)
                if info.st_size > self.limit:
                    return False
                if sha256 in self._entries:
                    self._entries.move_to_end(sha256)
                    return True
                self._evict(info.st_size)
                temporary = self.root / f"adding-{secrets.token_hex(8)}"
                os.link(path, temporary)
                try:
                    os.chmod(temporary, 0o444)
                    os.replace(temporary, self.root / sha256)
                except BaseException:
                    _unlink(temporary)
                    raise
                info = os.stat(self.root / sha256)
            except OSError as e:
                log.warn("could not keep {path} in the model cache: {error}",
                         path=str(path), error=e.strerror or str(e))
                return False
            self._entries[sha256] = _fingerprint(info)
            self._sizes[sha256] = info.st_size
            return True

    def lookup(self, sha256: str, size: int) -> Path | None:
        """The entry holding C{size} bytes with SHA-256 C{sha256}, verified, or None. An
        entry whose bytes changed is removed."""
        with self._lock:
            recorded = self._entries.get(sha256, False)
            if recorded is False or self._sizes.get(sha256) != size:
                self.misses += 1
                return None
        path = self.root / sha256
        try:
            info = os.stat(path, follow_symlinks=False)
            if recorded != _fingerprint(info):
                # not as recorded (or never checked): hash it again, holding no lock
                if not stat.S_ISREG(info.st_mode) or info.st_size != size \
                        or sha256_of(path) != sha256:
                    raise ValueError("its bytes changed")
                os.chmod(path, 0o444)
                with self._lock:
                    if sha256 in self._entries:
                        self._entries[sha256] = _fingerprint(os.stat(path))
        except (OSError, ValueError) as e:
            log.warn("dropped the model cache entry {sha256}: {why}", sha256=sha256,
                     why=getattr(e, "strerror", None) or str(e))
            with self._lock:
                self.remove(sha256)
                self.misses += 1
            return None
        with self._lock:
            if sha256 not in self._entries:  # evicted meanwhile
                self.misses += 1
                return None
            self._entries.move_to_end(sha256)
            self.hits += 1
        return path

    def link_into(self, sha256: str, size: int, target: Path) -> bool:
        """Link the verified entry C{sha256} of C{size} bytes to the new path C{target};
        say whether it was there to link."""
        path = self.lookup(sha256, size)
        if path is None:
            return False
        try:
            os.link(path, target)
        except OSError as e:
            log.warn("could not link the model cache entry {sha256}: {error}",
                     sha256=sha256, error=e.strerror or str(e))
            return False
        return True

    def remove(self, sha256: str) -> None:
        """Forget an entry and remove its file (sessions holding it keep their link)."""
        with self._lock:
            self._entries.pop(sha256, None)
            self._sizes.pop(sha256, None)
            _unlink(self.root / sha256)

    def _evict(self, room: int) -> None:
        """Remove least recently used entries until C{room} more bytes fit."""
        while self._entries and self.used + room > self.limit:
            oldest = next(iter(self._entries))
            self.remove(oldest)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def store_cached(cache: ModelCache, directory: SessionDirectory, relpath: str, size: int,
                 sha256: str) -> bool:
    """Store the cached content C{sha256} of C{size} bytes as C{relpath} of a session,
    within its quota (L{LimitExceeded} otherwise), in one rename; say whether the cache
    held it. Refuses a path as an upload to it would be refused."""
    directory.resolve(relpath)
    if sha256 not in cache:
        cache.misses += 1
        return False
    token = object()
    directory.reserve(token, size, relpath)
    try:
        partial = directory.partial / f"cached-{secrets.token_hex(8)}"
        if not cache.link_into(sha256, size, partial):
            return False
        try:
            directory.commit(partial, relpath, remove_quietly)
        except BaseException:
            _unlink(partial)
            raise
        return True
    finally:
        directory.release(token)


def store_cached_in_thread(cache: ModelCache, directory: SessionDirectory, relpath: str,
                           size: int, sha256: str, in_thread: InThread,
                           ended: Any = lambda: False) -> Deferred[bool]:
    """L{store_cached}, with the entry checked (hashed again if it is not as recorded)
    and linked in a thread (C{in_thread}); the path and quota are checked, and the file
    stored, on the calling thread. Fires with whether the cache held it; fails with
    L{SessionEnded} (nothing stored) when C{ended()} says the session ended meanwhile."""
    directory.resolve(relpath)
    if sha256 not in cache:
        with cache._lock:
            cache.misses += 1
        return succeed(False)
    token = object()
    directory.reserve(token, size, relpath)
    partial = directory.partial / f"cached-{secrets.token_hex(8)}"

    def linked(found: bool) -> bool:
        if not found:
            return False
        try:
            if ended():
                raise SessionEnded("The session ended while a cached file was stored.")
            directory.commit(partial, relpath,
                             lambda replaced: in_thread(remove_quietly, replaced))
        except BaseException:
            _unlink(partial)
            raise
        return True

    def released(result: Any) -> Any:
        directory.release(token)
        return result

    d: Deferred[bool] = in_thread(cache.link_into, sha256, size, partial)
    return d.addCallback(linked).addBoth(released)
