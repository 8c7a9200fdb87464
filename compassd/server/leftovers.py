"""What a board server leaves behind if it dies, and how its next start removes it.

A server that is killed (SIGKILL, OOM killer, power cut of its cgroup) cannot clean up.
Its executors die with it (L{compassd.lifeline}), but one that was still
starting, a session directory and a tensor arena in C{/dev/shm} may remain. The work
directory records what is ours, so the next start removes exactly that:

- C{compass-server.lock}: locked (C{flock}) while a server runs and holding its pid. Two
  servers never share a work directory, so whatever the records below name belongs to a
  server that is gone once the lock is ours.
- C{executors/<pid>}: one file per executor this server started, holding the process's
  start time (from C{/proc/<pid>/stat}), so a pid that the kernel gave to another process
  since is never killed.
- C{session-<id>/arena}: the path of the session's arena
  (L{compassd.server.sessiondir.SessionDirectory.note_arena}).

Everything here is small, synchronous file system work run once at start and once per
executor; the descriptions returned are for the server's log.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
from pathlib import Path

from .sessiondir import ARENA_NOTE, PREFIX

LOCK = "compass-server.lock"
EXECUTORS = "executors"
ARENA_PREFIX = "compass-arena-"


class WorkdirBusy(Exception):
    """Another live server holds the work directory."""


def process_start_time(pid: int) -> str | None:
    """The start time of process C{pid} in clock ticks since boot (field 22 of
    C{/proc/PID/stat}), or None if there is no such process, or it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 1:].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


class Workdir:
    """The records of one server's work directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    @property
    def executors(self) -> Path:
        return self.root / EXECUTORS

    # --- the lock ------------------------------------------------------------------

    def lock(self) -> None:
        """Hold the work directory for this process, or raise L{WorkdirBusy} naming the
        server that holds it."""
        if self._lock_fd is not None:
            return
        path = self.root / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirBusy(
                f"Another compass-server (pid {holder}) is using the work directory"
                f" {self.root}; give each server its own --workdir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # the lock goes with the descriptor

    # --- executors -----------------------------------------------------------------

    def record_executor(self, pid: int) -> None:
        """Note that this server started executor C{pid} (it is killed at the next start
        should this server die first)."""
        started = process_start_time(pid)
        if started is None:
            return  # it is gone already
        self.executors.mkdir(mode=0o700, exist_ok=True)
        (self.executors / str(pid)).write_text(started)

    def forget_executor(self, pid: int) -> None:
        try:
            os.unlink(self.executors / str(pid))
        except FileNotFoundError:
            pass

    def kill_leftover_executors(self) -> list[str]:
        """SIGKILL every executor an earlier run recorded and that still runs (the same
        pid with the same start time); remove the records. Returns what was killed."""
        killed = []
        try:
            records = sorted(os.scandir(self.executors), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in records:
            if not entry.name.isdigit() or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(entry.name)
            try:
                recorded = Path(entry.path).read_text().strip()
            except OSError:
                recorded = ""
            if recorded and pid != os.getpid() and process_start_time(pid) == recorded:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(f"executor process {pid}")
                except ProcessLookupError:
                    pass
            self.forget_executor(pid)
        return killed

    # --- arenas ----------------------------------------------------------------------

    def remove_recorded_arenas(self) -> list[str]:
        """Remove the arena files that stale session directories name (call it before
        removing those directories). Only regular files named C{compass-arena-*} are
        removed, never through a symlink."""
        removed = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            note = Path(entry.path) / ARENA_NOTE
            try:
                if not stat.S_ISREG(os.lstat(note).st_mode):
                    continue
                arena = note.read_text().strip()
            except OSError:
                continue
            if not (os.path.isabs(arena) and os.path.basename(arena).startswith(ARENA_PREFIX)):
                continue
            try:
                info = os.lstat(arena)
                if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                    os.unlink(arena)
                    removed.append(arena)
            except OSError:
                continue
        return removed
