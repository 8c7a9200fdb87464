"""A store in a PostgreSQL database, through psycopg 3 (Debian 12: python3-psycopg).

For labs that keep their state in a database they already back up, and for a standby
tracker: two trackers may open the same database; the schema is created and migrated
under a transaction-scoped advisory lock, so they never migrate at once.
"""

from __future__ import annotations

import json
from typing import Any

from ._sql import SqlStore
from .records import StoreError

SCHEMA_LOCK = 0x636F6D70  # "comp": serialises migrations between trackers
ACTIVE_LOCK = 0x61637476  # "actv": held by the active tracker of a standby pair


def describe(url: str) -> str:
    """C{url} without its password, for messages and logs."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return url.split("@")[-1] if "@" in url else url
    try:
        params = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a URL psycopg cannot parse: show nothing secret
        return "postgresql://(an unparseable URL)"
    user = str(params.get("user") or "")
    host = params.get("host") or "localhost"
    port = str(params.get("port") or "")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{user + '@' if user else ''}{where}/{params.get('dbname') or ''}"


class PostgresStore(SqlStore):
    """A store in the PostgreSQL database at C{url} (a libpq URL or key=value string)."""

    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.description = describe(url)
        self.connect_timeout = connect_timeout

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                f"The tracker's store {self.description} needs psycopg 3, which is not"
                " installed: install python3-psycopg (Debian) or pip install"
                " 'compassd[postgresql]'."
            ) from None
        return psycopg.connect(
            self.url, autocommit=True,
            connect_timeout=max(1, int(self.connect_timeout)),
            application_name="compass-tracker")

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        try:
            import psycopg
        except ImportError:
            return ()
        return (psycopg.Error,)

    def _lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))


ACTIVE_META = "active-tracker"
"""The C{compass_meta} row where the active tracker writes the address clients and
boards dial (JSON: C{address}, C{since}); a standby redirects to it."""


class ActiveLock:
    """The advisory lock that makes one of the trackers sharing a database the active
    one, on a connection of its own: PostgreSQL keeps a session-level advisory lock for
    as long as that connection lives, and frees it when the connection drops (the
    tracker stopped, was killed, or its host went away), so a standby then takes it.

    Every method blocks: the tracker calls them off the reactor thread (L{try_take}
    once before it listens, too). C{address} is what the active tracker writes for the
    standbys' redirects.
    """

    def __init__(self, url: str, address: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.address = address
        self.description = describe(url)
        self.connect_timeout = connect_timeout
        self.held = False
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            import psycopg

            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                application_name="compass-tracker active lock")
        return self._conn

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error, OSError)

    def try_take(self, now: float) -> bool:
        """Take the lock if no other tracker holds it; once taken, write this tracker's
        address (at C{now}, wall-clock seconds) for the standbys. A database that cannot
        be reached is a L{StoreError}."""
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ACTIVE_LOCK,)).fetchone()
            if not (row and row[0]):
                return False
            self.held = True
            conn.execute(
                "INSERT INTO compass_meta (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (ACTIVE_META, json.dumps({"address": self.address, "since": now})))
            return True
        except self._errors() as e:
            self.close()
            raise StoreError(
                f"The tracker's store {self.description} could not be asked which tracker"
                f" is active: {' '.join(str(e).split()).rstrip('.')}.") from e

    def active(self) -> str | None:
        """The address the active tracker wrote (None if none did, or the database
        cannot be read right now)."""
        try:
            row = self._connection().execute(
                "SELECT value FROM compass_meta WHERE name = %s", (ACTIVE_META,)).fetchone()
        except self._errors():
            self.close()
            return None
        if not row:
            return None
        try:
            return str(json.loads(row[0])["address"])
        except (ValueError, KeyError, TypeError):
            return None

    def still_held(self) -> bool:
        """Whether the lock's connection is alive (so the lock is still ours)."""
        if not self.held or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1").fetchone()
        except self._errors():
            self.close()
            return False
        return True

    def close(self) -> None:
        """Drop the connection, and with it the lock."""
        conn, self._conn = self._conn, None
        self.held = False
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
