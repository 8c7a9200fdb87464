"""Timestamps for bench/smallrun.py, in every Python process it starts (opt-in).

bench/smallrun.py puts this folder on the daemons' PYTHONPATH and names a folder in
COMPASS_BENCH_STAMPS; Python then imports this module at start-up in the tracker, the
board server and its executors. Without COMPASS_BENCH_STAMPS it does nothing, and nothing
in compassd imports it: no stamp is taken on any path outside this bench.

Each process wraps Twisted's reads and writes of TCP connections and of pipes (the
board <-> executor channel is a pair of pipes) and records, at the start and the end of
each: the CLOCK_MONOTONIC time (shared by all processes of the machine, so stamps of
different processes compare), the thread's CPU time, what happened and on which file
descriptor. Records go to a memory-mapped file per process (``<pid>.stamps``): a stamp
is a few memory writes, no system call, and an executor that ends with ``os._exit``
loses none.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

RECORD = struct.Struct("<qqii")
"""One stamp: monotonic ns, thread CPU ns, event code, file descriptor."""

CAPACITY = 1 << 20
"""Stamps a process may take (24 MiB of file); later ones are dropped."""

EVENTS = ("tcp.read0", "tcp.read1", "tcp.write0", "tcp.write1",
          "pipe.read0", "pipe.read1", "pipe.write0", "pipe.write1",
          "client.call", "client.start", "client.fired", "client.return")
"""Event names by code; the client's are taken by bench/smallrun.py itself."""


class Stamps:
    """The stamp file of one process."""

    def __init__(self, folder: str) -> None:
        import mmap

        path = os.path.join(folder, f"{os.getpid()}.stamps")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, 8 + CAPACITY * RECORD.size)
            self._map = mmap.mmap(fd, 8 + CAPACITY * RECORD.size)
        finally:
            os.close(fd)
        self._count = 0
        self._pack = RECORD.pack_into
        self._monotonic = time.monotonic_ns
        self._cpu = time.thread_time_ns

    def stamp(self, code: int, fd: int = -1) -> None:
        n = self._count
        if n < CAPACITY:
            self._pack(self._map, 8 + n * RECORD.size, self._monotonic(), self._cpu(),
                       code, fd)
            self._count = n + 1
            struct.pack_into("<q", self._map, 0, n + 1)


def _wrap(cls: Any, method: str, start: int) -> None:
    original = getattr(cls, method)

    def wrapped(self: Any, *args: Any) -> Any:
        fd = self.fileno()
        stamps.stamp(start, fd)
        try:
            return original(self, *args)
        finally:
            stamps.stamp(start + 1, fd)

    setattr(cls, method, wrapped)


def read(path: str) -> list[tuple[int, int, str, int]]:
    """The stamps in one file: (monotonic ns, thread CPU ns, event, fd), in order."""
    with open(path, "rb") as f:
        data = f.read()
    (count,) = struct.unpack_from("<q", data, 0)
    return [(t, cpu, EVENTS[code], fd)
            for t, cpu, code, fd in (RECORD.unpack_from(data, 8 + i * RECORD.size)
                                     for i in range(count))]


stamps: Stamps | None = None
_folder = os.environ.get("COMPASS_BENCH_STAMPS")
if _folder:
    stamps = Stamps(_folder)
    from twisted.internet import process, tcp

    _wrap(tcp.Connection, "doRead", EVENTS.index("tcp.read0"))
    _wrap(tcp.Connection, "writeSomeData", EVENTS.index("tcp.write0"))
    _wrap(process.ProcessReader, "doRead", EVENTS.index("pipe.read0"))
    _wrap(process.ProcessWriter, "writeSomeData", EVENTS.index("pipe.write0"))
