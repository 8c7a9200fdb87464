"""Room in the arena's file system: reserved before it is written, so a full one fails
with a sentence, never with a signal.

An arena (L{compassd.executor.arena.Arena}) is a sparse file: its pages cost nothing
until they are touched. Touching a page of a C{MAP_SHARED} mapping when its file system
(C{/dev/shm}, a tmpfs: Docker's default is 64 MiB) has no room left is a SIGBUS, which
kills the process that touched it: the board server itself while it receives inputs.
So both sides reserve the byte range they are about to write with
C{posix_fallocate} first (L{ArenaSpace.reserve}): the server the inputs' range, the
executor the outputs' range. A reservation that cannot be had raises
L{OutOfSharedMemory} saying how much room there is and how much the run needs.

A reservation lasts as long as the arena file (a session); L{ArenaSpace} remembers the
reserved range, so a session that repeats runs of the same size makes no system call.
"""

from __future__ import annotations

import errno
import os

MIB = 1 << 20


class OutOfSharedMemory(Exception):
    """The arena's file system has no room for a run; the message is a sentence."""


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged process may still write in the file system of C{path}."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    value = n / MIB
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def describe_shortage(where: str, free: int, need: int) -> str:
    """The sentence a client sees when a run does not fit in the board's memory."""
    return (
        f"The board's shared memory ({where}) has {_mib(free)} MiB free; this run needs"
        f" {_mib(need)} MiB more. Send smaller tensors, or ask the board's admin for a"
        " larger /dev/shm.")


class ArenaSpace:
    """The reserved byte range of one arena file (one per process that writes it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.start = 0
        self.end = 0
        """The reserved range is C{[start, end)} (empty at first)."""
        self.supported = True
        """False once the file system said it cannot reserve (the range stays sparse)."""

    def reserve(self, start: int, end: int) -> None:
        """Make sure the pages of bytes C{[start, end)} are allocated, or raise
        L{OutOfSharedMemory}. Nothing is done for a range reserved already."""
        if end <= start or not self.supported:
            return
        if self.start <= start and end <= self.end:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.posix_fallocate(fd, start, end - start)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.supported = False  # nothing to reserve with: as sparse as before
                return
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM):
                where = os.path.dirname(self.path) or "."
                try:
                    free = free_bytes(where)
                except OSError:
                    free = 0
                raise OutOfSharedMemory(
                    describe_shortage(where, free, self._missing(start, end))) from None
            raise
        finally:
            os.close(fd)
        if self.end < start or end < self.start or self.end == self.start:
            self.start, self.end = start, end  # disjoint: remember the newer range
        else:
            self.start, self.end = min(self.start, start), max(self.end, end)

    def _missing(self, start: int, end: int) -> int:
        """Bytes of C{[start, end)} outside the reserved range."""
        overlap = max(0, min(end, self.end) - max(start, self.start))
        return (end - start) - overlap
