"""The SHA-256 of local files, remembered while they stay unchanged, across processes.

A developer uploads the same model again and again, each time from a new process
(C{compass run}). With the digest at hand, a client asks the board's model cache
(C{use-cached}) without reading the file; without it, it streams the file while hashing
it (C{upload-digest-after}) and remembers the digest for next time.

A file is known by its real path, size, modification and change times (ns), device and
inode: writing to it, or replacing it, changes one of them (the change time cannot be
set back by a program), and then it is hashed again. Digests are kept in this process
and in a file of the user's own (mode 0600): C{$COMPASS_DIGESTS} if set (empty: no file),
else C{$XDG_CACHE_HOME/compassd/digests}, else C{~/.cache/compassd/digests}. Each line
is C{sha256 size mtime_ns ctime_ns device inode path}; lines are only appended (one
write each), and the file is rewritten with the newest L{LIMIT} entries when it holds
twice that. A line that does not parse is skipped; a file that cannot be read or written
only means hashing again.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

Key = tuple[str, int, int, int, int, int]
"""(real path, size, mtime_ns, ctime_ns, device, inode)."""

LIMIT = 4096
"""Entries kept, in this process and in the file (the oldest are forgotten first)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_lock = threading.Lock()
_known: dict[Key, str] = {}
_loaded_from: str | None = None
_lines_in_file = 0


def file_key(source: str | os.PathLike[str], info: os.stat_result | None = None) -> Key:
    """What identifies the current content of the file C{source} (its C{stat} when
    C{info} is not given)."""
    if info is None:
        info = os.stat(source)
    return (os.path.realpath(source), info.st_size, info.st_mtime_ns, info.st_ctime_ns,
            info.st_dev, info.st_ino)


def store_path() -> str | None:
    """The file digests are kept in, or None when there is none."""
    chosen = os.environ.get("COMPASS_DIGESTS")
    if chosen is not None:
        return chosen or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".cache")
    if not os.path.isabs(base):
        return None
    return os.path.join(base, "compassd", "digests")


def _parse(line: str) -> tuple[Key, str] | None:
    parts = line.rstrip("\n").split(" ", 6)
    if len(parts) != 7 or not _SHA256.match(parts[0]):
        return None
    try:
        numbers = [int(p) for p in parts[1:6]]
    except ValueError:
        return None
    size, mtime, ctime, device, inode = numbers
    return (parts[6], size, mtime, ctime, device, inode), parts[0]


def _line(key: Key, sha256: str) -> str:
    path, size, mtime, ctime, device, inode = key
    return f"{sha256} {size} {mtime} {ctime} {device} {inode} {path}\n"


def _load_locked(path: str | None) -> None:
    """Read the file's entries into memory, once per file (the lock is held)."""
    global _loaded_from, _lines_in_file
    if path is None or _loaded_from == path:
        return
    _loaded_from = path
    _lines_in_file = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                _lines_in_file += 1
                parsed = _parse(line)
                if parsed is not None and "\n" not in parsed[0][0]:
                    _known.pop(parsed[0], None)
                    _known[parsed[0]] = parsed[1]
    except OSError:
        return
    _trim_locked()


def _trim_locked() -> None:
    while len(_known) > LIMIT:
        del _known[next(iter(_known))]


def lookup(key: Key) -> str | None:
    """The remembered SHA-256 of the file content C{key} names, or None."""
    with _lock:
        _load_locked(store_path())
        return _known.get(key)


def remember(key: Key, sha256: str) -> None:
    """Remember that the content C{key} names has SHA-256 C{sha256} (lower-case hex)."""
    global _lines_in_file
    if not _SHA256.match(sha256) or "\n" in key[0]:
        return
    path = store_path()
    with _lock:
        _load_locked(path)
        if _known.get(key) == sha256:
            return
        _known.pop(key, None)
        _known[key] = sha256
        _trim_locked()
        if path is None:
            return
        try:
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _lines_in_file >= 2 * LIMIT:
                temporary = f"{path}.{os.getpid()}.new"
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.writelines(_line(k, v) for k, v in _known.items())
                os.replace(temporary, path)
                _lines_in_file = len(_known)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, _line(key, sha256).encode("utf-8", "surrogateescape"))
                finally:
                    os.close(fd)
                _lines_in_file += 1
        except OSError:
            pass


def forget_all() -> None:
    """Forget what this process remembers (the file stays); for tests."""
    global _loaded_from, _lines_in_file
    with _lock:
        _known.clear()
        _loaded_from = None
        _lines_in_file = 0
