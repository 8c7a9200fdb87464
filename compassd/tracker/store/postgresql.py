"""A store in a PostgreSQL database, through psycopg 3 (Debian 12: python3-psycopg).

For labs that keep their state in a database they already back up, and for a standby
tracker: two trackers may open the same database; the schema is created and migrated
under a transaction-scoped advisory lock, so they never migrate at once.
"""

from __future__ import annotations

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
