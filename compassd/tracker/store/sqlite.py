"""The default store: one SQLite file in the tracker's state directory, in WAL mode.

WAL with C{synchronous=NORMAL}: a committed batch survives the tracker being killed
(kill -9, a crash); only a power loss may take the last batches with it. The file is
locked for one tracker process at a time (a second tracker on the same file refuses to
start),
and its integrity is checked when it is opened.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from typing import Any

from ._sql import SqlStore, _reason
from .records import StoreError


class SqliteStore(SqlStore):
    """A store in the SQLite file at C{path} (made, with its directory, if missing)."""

    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._lock: int | None = None

    def _connect(self) -> Any:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"The tracker's store {self.path} cannot be created: its directory"
                f" {directory} cannot be made ({e.strerror}); choose another --store path."
            ) from None
        if self._reads_only:
            # a report's connection: WAL lets it read while the writer writes
            return sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._take_lock()
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        path = self.path + ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise StoreError(
                f"The tracker's store {self.path} cannot be used: its lock file {path}"
                f" cannot be opened ({e.strerror})."
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"The tracker's store {self.path} is in use by another compass-tracker;"
                " stop it, or give this one its own --store."
            ) from None
        self._lock = fd

    def release_lock(self) -> None:
        """Let another tracker use the file (at stop)."""
        self.close()
        if self._lock is not None and not self._reads_only:
            os.close(self._lock)
            self._lock = None

    def _begin(self, cur: Any) -> None:
        # a writer takes the write lock at once; a reader's snapshot needs none
        cur.execute("BEGIN" if self._reads_only else "BEGIN IMMEDIATE")

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _after_migrate(self, cur: Any) -> None:
        rows = self._guard(
            "check its file", lambda: list(cur.execute("PRAGMA quick_check").fetchall()))
        problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
        if problems:
            raise StoreError(
                f"The tracker's store {self.path} is damaged ({'; '.join(problems[:3])});"
                " restore it from a backup, or move it away to start with an empty store."
            )

    def _sentence(self, doing: str, error: BaseException) -> str:
        reason = _reason(error)
        if isinstance(error, sqlite3.DatabaseError) and (
            "not a database" in reason or "malformed" in reason
        ):
            return (
                f"The tracker's store {self.path} is damaged and could not {doing}"
                f" ({reason}); restore it from a backup, or move it away to start with an"
                " empty store."
            )
        return f"The tracker's store {self.path} could not {doing}: {reason}."
