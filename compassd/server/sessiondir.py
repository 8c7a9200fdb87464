"""A session's private directory on the board, and the rule that no client path leaves it.

Each session gets C{<work>/session-<id>/} (mode 0700), removed when the session ends in
any way and, should the server die first, by L{clean_stale} at its next start. Inside it:

- C{files/} is the client's area: every path a client names is relative to it;
- C{partial/} holds uploads still arriving (L{compassd.server.upload}); no client path
  reaches it, and a finished upload is renamed from there into C{files/} in one step.

Promises, each checked by the tests:

- L{SessionDirectory.resolve} gives a path inside C{files/}, both as written and once
  every symlink along it is followed, or refuses with L{PathRefused}: empty paths,
  absolute paths, C{..}, NUL bytes, over-long names and symlinks that lead out;
- files are opened with C{O_NOFOLLOW}, so not even a symlink that stays inside is
  written or read through;
- the bytes a session stores never exceed its quota (L{SessionDirectory.max_upload}),
  nor its files and folders L{SessionDirectory.max_entries}, nor a path's depth
  L{SessionDirectory.max_depth}: room is checked, and reserved, before anything is
  written;
- the quota is counted as files are stored and removed, never by walking the tree: an
  upload's check touches only the inodes along its own path, however many files the
  session holds (removing a folder walks that folder, which the entry limit bounds);
- L{SessionDirectory.destroy} and L{clean_stale} delete without following symlinks, and
  L{clean_stale} touches nothing in the work directory but C{session-*} directories.

Clients cannot create symlinks (no command makes one), so the symlink checks defend
against links made on the board by other means; between the check and the use nobody the
client controls can change the tree.

Everything here is synchronous file system work with no reactor; the server runs it in the
reactor thread for small calls (they touch a handful of inodes).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from ..protocol.errors import BadRequest, LimitExceeded, NoSuchFile, PathRefused

PREFIX = "session-"
"""The name of every session directory starts with this; L{clean_stale} removes only those."""

MAX_NAME_BYTES = 255
"""Bytes (UTF-8) in one component of a client path: Linux's C{NAME_MAX}."""

MAX_PATH_BYTES = 1024
"""Bytes (UTF-8) in a whole client path."""

MAX_ENTRIES = 10_000
"""Default files and folders one session may hold (compass-server --max-files)."""

MAX_DEPTH = 32
"""Folders deep a stored file may be."""

FILES = "files"
PARTIAL = "partial"
ARENA_NOTE = "arena"
"""A file in the session directory (out of every client path's reach) naming the
session's tensor arena, so that the next start of a server that died removes it
(L{compassd.server.leftovers})."""

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the files at C{a} and C{b} in one step (Linux's C{renameat2} with
    C{RENAME_EXCHANGE}); False, having changed nothing, where the system or the file
    system cannot (then use C{os.replace}).

    Why: renaming a freshly written file over an existing one makes ext4 (its default
    C{auto_da_alloc}) allocate and start writing the new file's blocks there and then,
    and frees the old file's blocks, in the rename: over 100 ms for a 256 MiB upload, on
    the reactor thread. Exchanging costs a fraction of a millisecond, and the old content,
    now at C{a}, can be removed later in a thread."""
    global _renameat2
    if _renameat2 is None:
        try:
            function = ctypes.CDLL(None, use_errno=True).renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_uint]
            function.restype = ctypes.c_int
            _renameat2 = function
        except (OSError, AttributeError):  # not Linux, or a libc older than 2.28
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # cannot exchange here
            return False
        raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))
    return True


def remove_quietly(path: Path) -> None:
    """Remove a file a commit replaced (L{SessionDirectory.commit}'s C{remove_later}),
    in a thread; one that cannot be removed now goes with the session directory."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@attrs.frozen
class FileEntry:
    """One row of a listing: C{kind} is C{file}, C{dir}, C{link} or C{other}; C{size} is
    the byte count of a file and 0 for anything else."""

    name: str
    size: int
    kind: str

    def as_box(self) -> dict[str, object]:
        """The row as L{compassd.protocol.session.FILE} carries it."""
        return {"name": self.name, "size": self.size, "kind": self.kind}


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


@attrs.define(eq=False)
class SessionDirectory:
    """The private directory of one session. Make one with L{SessionDirectory.create}."""

    session: str
    """The session's id; the directory is named C{session-<id>}."""

    path: Path
    """The session directory itself (what L{destroy} removes)."""

    max_upload: int
    """Bytes the session may store in all, files and uploads under way together."""

    max_entries: int = MAX_ENTRIES
    """Files and folders the session may hold in all, uploads under way included."""

    max_depth: int = MAX_DEPTH
    """Folders deep a stored file may be (C{a/b/c.bin} is 3 deep)."""

    _reserved: dict[object, tuple[int, int]] = attrs.field(factory=dict)
    """Per upload under way: the bytes and the new entries it holds."""
    _stored: int = 0
    """Bytes of the regular files stored through L{commit}, less those removed."""
    _entries: int = 0
    """Files and folders made through L{commit}, less those removed."""
    destroyed: bool = False
    """Whether L{destroy} was called: the session ended, and an upload still under way
    must store nothing (L{compassd.server.upload.UploadSink} checks it)."""

    @classmethod
    def create(
        cls, root: str | os.PathLike[str], max_upload: int, session: str | None = None,
        *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH,
    ) -> SessionDirectory:
        """Make a fresh session directory under the work directory C{root} (created, mode
        0700, if missing). C{session} defaults to a random id; an existing directory of
        the same name is an error (C{FileExistsError}), never reused."""
        if session is None:
            session = secrets.token_hex(8)
        if not _SESSION_ID.match(session):
            raise ValueError(f"{session!r} is not a usable session id (letters, digits, ._-).")
        if max_upload < 0:
            raise ValueError(f"max_upload must be zero or more, not {max_upload!r}.")
        os.makedirs(root, mode=0o700, exist_ok=True)
        path = Path(os.path.realpath(root)) / f"{PREFIX}{session}"
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # the umask may only take bits away; make it exact
        for sub in (FILES, PARTIAL):
            os.mkdir(path / sub, 0o700)
            os.chmod(path / sub, 0o700)
        return cls(session=session, path=path, max_upload=max_upload,
                   max_entries=max_entries, max_depth=max_depth)

    @property
    def files(self) -> Path:
        """The client's area: every client path is relative to it."""
        return self.path / FILES

    @property
    def partial(self) -> Path:
        """Where uploads under way are written; out of every client path's reach."""
        return self.path / PARTIAL

    def note_arena(self, arena: str | os.PathLike[str]) -> None:
        """Record the path of the session's arena (see L{ARENA_NOTE})."""
        fd = os.open(self.path / ARENA_NOTE,
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o600)
        with open(fd, "w") as f:
            f.write(os.path.abspath(os.fspath(arena)))

    # --- paths ----------------------------------------------------------------------

    def resolve(self, relpath: str, *, allow_root: bool = False) -> Path:
        """The path in the client's area that C{relpath} names, or L{PathRefused}.

        The result is lexically inside L{files}, and so is its real path once symlinks
        along it are followed (the last component may be a symlink that stays inside:
        operations that open files refuse those themselves). C{.} components and repeated
        slashes are ignored. With C{allow_root}, an empty path or C{.} names L{files}
        itself (for listings).
        """
        if not isinstance(relpath, str):
            raise PathRefused(f"The path {relpath!r} is not text; give a relative path.")
        shown = repr(relpath) if len(relpath) <= 80 else repr(relpath[:77] + "...")
        if "\x00" in relpath:
            raise PathRefused(f"The path {shown} contains a NUL byte; file names cannot.")
        try:
            encoded = relpath.encode("utf-8")
        except UnicodeEncodeError:
            raise PathRefused(
                f"The path {shown} is not valid Unicode text; name files in UTF-8."
            ) from None
        if len(encoded) > MAX_PATH_BYTES:
            raise PathRefused(
                f"The path {shown} is {len(encoded)} bytes long; the limit is"
                f" {MAX_PATH_BYTES}. Use a shorter path."
            )
        if relpath.startswith("/"):
            raise PathRefused(
                f"The path {shown} is absolute; give a path relative to the session"
                " directory, such as 'model.onnx'."
            )
        parts = [part for part in relpath.split("/") if part not in ("", ".")]
        for part in parts:
            if part == "..":
                raise PathRefused(
                    f"The path {shown} climbs out with '..'; paths must stay inside the"
                    " session directory."
                )
            if len(part.encode("utf-8")) > MAX_NAME_BYTES:
                raise PathRefused(
                    f"The path {shown} has a name longer than {MAX_NAME_BYTES} bytes;"
                    " use shorter names."
                )
        if not parts and not allow_root:
            raise PathRefused(
                f"The path {shown} names no file; give a file name such as 'model.onnx'."
            )
        root = str(self.files)
        candidate = os.path.join(root, *parts)
        real = os.path.realpath(candidate)
        if not _inside(real, root):
            raise PathRefused(
                f"The path {shown} leads out of the session directory through a symbolic"
                " link; links may only point inside it."
            )
        if real == root and not allow_root:
            raise PathRefused(
                f"The path {shown} leads back to the session directory itself through a"
                " symbolic link; name a file inside it."
            )
        return Path(candidate)

    def describe(self, relpath: str) -> str:
        return f"{relpath!r} in session {self.session}"

    # --- listing and removing ---------------------------------------------------------

    def listdir(self, relpath: str | None = None) -> list[FileEntry]:
        """The entries of the client's area, or of a folder in it, sorted by name; for a
        path that names a file, that file's row alone. Symlinks are shown, not followed."""
        target = self.resolve(relpath or "", allow_root=True)
        try:
            info = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchFile(
                f"There is no {self.describe(relpath or '')}; list the session directory"
                " to see what is there."
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            if stat.S_ISLNK(info.st_mode) and os.path.isdir(target):
                pass  # a link to a folder inside (resolve checked): list the folder
            else:
                return [self._entry(target.name, info)]
        rows = []
        with os.scandir(target) as entries:
            for entry in entries:
                try:
                    rows.append(self._entry(entry.name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue  # removed while we looked
        rows.sort(key=lambda row: row.name)
        return rows

    @staticmethod
    def _entry(name: str, info: os.stat_result) -> FileEntry:
        kind = _kind(info.st_mode)
        return FileEntry(name=name, size=info.st_size if kind == "file" else 0, kind=kind)

    def remove(self, relpath: str) -> None:
        """Remove a file, a symlink (not what it points to) or a whole folder."""
        target = self.resolve(relpath)
        try:
            info = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):  # a/b where a is a file
            raise NoSuchFile(
                f"There is no {self.describe(relpath)} to remove; list the session"
                " directory to see what is there."
            ) from None
        if stat.S_ISDIR(info.st_mode):
            size, entries = _tally(target)
            _rmtree(target)
            self._forget(size, entries + 1)
        else:
            try:
                os.unlink(target)
            except FileNotFoundError:
                return  # gone already: the outcome the caller asked for
            self._forget(info.st_size if stat.S_ISREG(info.st_mode) else 0, 1)

    def _forget(self, size: int, entries: int) -> None:
        self._stored = max(0, self._stored - size)
        self._entries = max(0, self._entries - entries)

    # --- reading and writing ------------------------------------------------------------

    def open_for_write(self, relpath: str) -> BinaryIO:
        """Open C{relpath} for writing (created or truncated, mode 0600), making the
        folders above it inside the session directory. A symlink is never written
        through, even one that stays inside. This does not count against the quota: use
        L{reserve} first for bytes a client sends."""
        target = self.resolve(relpath)
        self._make_parents(target, relpath)
        fd = self._open(target, relpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        return open(fd, "wb")

    def open_for_read(self, relpath: str) -> BinaryIO:
        """Open the regular file C{relpath} for reading, never through a symlink."""
        target = self.resolve(relpath)
        # O_NONBLOCK: opening a FIFO must not hang the server (it is refused below).
        fd = self._open(target, relpath, os.O_RDONLY | os.O_NONBLOCK)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            kind = "folder" if stat.S_ISDIR(info.st_mode) else "special file"
            raise PathRefused(
                f"The {self.describe(relpath)} is a {kind}; only files can be read."
            )
        return open(fd, "rb")

    def _open(self, target: Path, relpath: str, flags: int) -> int:
        try:
            return os.open(target, flags | _OPEN_FLAGS, 0o600)
        except FileNotFoundError:
            raise NoSuchFile(
                f"There is no {self.describe(relpath)}; list the session directory to"
                " see what is there."
            ) from None
        except IsADirectoryError:
            raise PathRefused(
                f"The {self.describe(relpath)} is a folder; name a file in it."
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathRefused(
                    f"The {self.describe(relpath)} is a symbolic link; files are never"
                    " opened through links. Name the file itself."
                ) from None
            if e.errno == errno.ENOTDIR:
                raise PathRefused(
                    f"The path {relpath!r} goes through something that is not a folder."
                ) from None
            raise

    def _make_parents(self, target: Path, relpath: str) -> int:
        """Make the folders above C{target} (mode 0700: C{os.makedirs} would give the
        intermediate ones the umask's mode); return how many it made."""
        folder = self.files
        made = 0
        for part in target.parent.relative_to(self.files).parts:
            folder = folder / part
            try:
                os.mkdir(folder, 0o700)
                made += 1
            except FileExistsError:
                if not folder.is_dir():
                    raise PathRefused(
                        f"The path {relpath!r} goes through a file as if it were a folder;"
                        " remove that file first or choose another path."
                    ) from None
            except NotADirectoryError:
                raise PathRefused(
                    f"The path {relpath!r} goes through a file as if it were a folder;"
                    " remove that file first or choose another path."
                ) from None
        return made

    def commit(self, partial: Path, relpath: str,
               remove_later: Callable[[Path], object] | None = None) -> Path:
        """Move a finished upload from L{partial} to C{relpath} in one step (replacing a
        file or link there, never a folder). Returns the stored path.

        With C{remove_later}, a regular file it replaces is swapped out (L{exchange})
        rather than renamed over, and C{remove_later(path)} is called with where its
        content now lies (in L{partial}), for the caller to remove it off the reactor
        thread; the quota no longer counts it from now."""
        if partial.parent != self.partial:
            raise ValueError(f"{partial} is not an upload of session {self.session}.")
        target = self.resolve(relpath)
        self._entries += self._make_parents(target, relpath)
        try:
            old = os.lstat(target)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise PathRefused(
                f"The {self.describe(relpath)} is a folder; remove it or upload to a path"
                " inside it."
            )
        size = os.lstat(partial).st_size
        if remove_later is not None and old is not None and stat.S_ISREG(old.st_mode) \
                and exchange(partial, target):
            remove_later(partial)  # the replaced content, now at the partial's path
        else:
            os.replace(partial, target)
        if old is None:
            self._entries += 1
        elif stat.S_ISREG(old.st_mode):
            self._stored = max(0, self._stored - old.st_size)
        self._stored += size
        return target

    def new_partial(self) -> tuple[Path, BinaryIO]:
        """A new, empty file in L{partial} for an upload under way."""
        for _ in range(8):
            path = self.partial / f"upload-{secrets.token_hex(8)}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
            except FileExistsError:
                continue
            return path, open(fd, "wb")
        raise RuntimeError("Could not find a free name for an upload (8 tries).")

    # --- quota ---------------------------------------------------------------------

    def used(self) -> int:
        """Bytes the session holds: the files stored through L{commit} (less those
        removed) plus uploads under way (counted at their announced size). Counted as
        they come and go: this walks nothing."""
        return self._stored + sum(size for size, _ in self._reserved.values())

    def entries(self) -> int:
        """Files and folders the session holds, those uploads under way will make
        included."""
        return self._entries + sum(new for _, new in self._reserved.values())

    def reserve(self, token: object, size: int, relpath: str) -> None:
        """Hold C{size} bytes of the quota, and the files and folders an upload to
        C{relpath} would make, for that upload (identified by C{token}), or raise
        L{LimitExceeded} saying how much room there is (L{PathRefused} for a path deeper
        than L{max_depth}). A file already at C{relpath} counts as freed, since the
        upload replaces it. Only the inodes along C{relpath} are looked at."""
        if size < 0:
            raise BadRequest(f"The size of {self.describe(relpath)} is negative ({size}).")
        if token in self._reserved:
            raise RuntimeError(f"{token!r} already holds a reservation.")
        target = self.resolve(relpath)
        parts = target.relative_to(self.files).parts
        if len(parts) - 1 > self.max_depth:
            raise PathRefused(
                f"The path {self.describe(relpath)} is {len(parts) - 1} folders deep; a"
                f" session allows {self.max_depth}. Use a flatter layout."
            )
        new, replaced = self._missing(parts)
        room = self.max_upload - (self.used() - replaced)
        if size > room:
            raise LimitExceeded(
                f"Storing {size} bytes as {self.describe(relpath)} would go over the"
                f" session's limit of {self.max_upload} bytes ({max(room, 0)} bytes are"
                " free); remove files you no longer need or send a smaller file."
            )
        held = self.entries()
        if new and held + new > self.max_entries:
            raise LimitExceeded(
                f"Storing {self.describe(relpath)} would make {new} more files and folders"
                f" in the session, which holds {held} of the {self.max_entries} it may;"
                " remove files you no longer need, or put fewer files in the model."
            )
        self._reserved[token] = (size, new)

    def _missing(self, parts: tuple[str, ...]) -> tuple[int, int]:
        """How many entries storing a file at C{parts} would make (folders and the file),
        and the bytes of a regular file it would replace."""
        path = self.files
        for depth, part in enumerate(parts):
            path = path / part
            try:
                info = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return len(parts) - depth, 0
        return 0, info.st_size if stat.S_ISREG(info.st_mode) else 0

    def release(self, token: object) -> None:
        """Give back what L{reserve} held for C{token} (nothing if it holds nothing)."""
        self._reserved.pop(token, None)

    # --- the end -------------------------------------------------------------------------

    def destroy(self) -> None:
        """Remove the whole session directory, never following a symlink out of it. Safe
        to call more than once."""
        self.destroyed = True
        self._reserved.clear()
        if os.path.lexists(self.path):
            _rmtree(self.path)


def _tally(folder: Path) -> tuple[int, int]:
    """The bytes of the regular files under C{folder} and how many entries it holds
    (not following symlinks)."""
    size = entries = 0
    for parent, dirs, names in os.walk(folder):
        entries += len(dirs) + len(names)
        for name in names:
            try:
                info = os.lstat(os.path.join(parent, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                size += info.st_size
    return size, entries


def _rmtree(path: Path) -> None:
    """C{shutil.rmtree} (which on Linux never follows symlinks), retried after giving the
    owner back access to folders someone made unreadable or read-only."""
    for _ in range(64):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            if not _grant_access(path):
                raise
        except OSError as e:
            # a file made while the tree was removed (a model cache entry linked in by
            # a thread): remove the tree again
            if e.errno != errno.ENOTEMPTY:
                raise
    shutil.rmtree(path)


def _grant_access(path: Path) -> bool:
    """Give the owner rwx on every folder under C{path} it can reach (symlinks are left
    alone); say whether anything changed. A folder that was unreadable is entered on the
    next call."""
    changed = False
    folders = [str(path)]
    for folder, dirs, _names in os.walk(path):
        folders.extend(os.path.join(folder, name) for name in dirs)
    for folder in folders:
        try:
            info = os.lstat(folder)
            if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o700 != 0o700:
                os.chmod(folder, stat.S_IMODE(info.st_mode) | 0o700)
                changed = True
        except OSError:
            continue
    return changed


def clean_stale(root: str | os.PathLike[str]) -> list[str]:
    """Remove the C{session-*} directories a previous run of the server left in the work
    directory C{root}, and return their names. Nothing else there is touched: not other
    files or folders, not symlinks named like sessions. A directory that cannot be
    removed is left (and not listed) for the next start to try again."""
    removed = []
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            _rmtree(Path(entry.path))
        except OSError:
            continue
        removed.append(entry.name)
    return removed
