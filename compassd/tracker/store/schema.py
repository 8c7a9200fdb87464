"""The store's tables, and the migrations that bring an older store to the newest schema.

Both databases get the same tables; C{{real}} and C{{bigint}} in a statement become each
database's type. C{compass_schema} holds one row, the version the tables are at; the
tracker applies every later migration in one transaction when it opens the store, and
refuses a store newer than it knows (a downgrade must not write to tables it does not
understand). Add a migration at the end; never edit one that has shipped.
"""

from __future__ import annotations

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS compass_schema (version INTEGER NOT NULL)"

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "devices, leases, waiting requests, history and meta", [
        """CREATE TABLE compass_meta (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
        """CREATE TABLE compass_devices (
            name TEXT PRIMARY KEY,
            key TEXT NOT NULL,
            address TEXT NOT NULL,
            flavor TEXT NOT NULL,
            tags TEXT NOT NULL,
            max_lease {real},
            drained INTEGER NOT NULL,
            quarantined INTEGER NOT NULL,
            quarantine_reason TEXT NOT NULL,
            registered_at {real} NOT NULL)""",
        """CREATE TABLE compass_requests (
            id TEXT PRIMARY KEY,
            key TEXT NOT NULL,
            user_name TEXT NOT NULL,
            priority INTEGER NOT NULL,
            tags TEXT NOT NULL,
            flavor TEXT NOT NULL,
            arrival {bigint} NOT NULL,
            enqueued_at {real} NOT NULL,
            lease_wanted {real},
            wait {real},
            deadline {real},
            secret_hash TEXT NOT NULL)""",
        """CREATE TABLE compass_leases (
            id TEXT PRIMARY KEY,
            device TEXT NOT NULL,
            key TEXT NOT NULL,
            user_name TEXT NOT NULL,
            request_id TEXT NOT NULL,
            priority INTEGER NOT NULL,
            tags TEXT NOT NULL,
            flavor TEXT NOT NULL,
            requested_at {real} NOT NULL,
            granted_at {real} NOT NULL,
            deadline {real} NOT NULL,
            ticket_hash TEXT NOT NULL,
            redeemed INTEGER NOT NULL,
            secret_hash TEXT NOT NULL)""",
        """CREATE TABLE compass_history (
            id TEXT PRIMARY KEY,
            user_name TEXT NOT NULL,
            key TEXT NOT NULL,
            device TEXT,
            request_id TEXT,
            priority INTEGER NOT NULL,
            requested_at {real} NOT NULL,
            granted_at {real},
            ended_at {real} NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL)""",
        "CREATE INDEX compass_history_ended ON compass_history (ended_at)",
    ]),
    (2, "history indexes for usage and history reports; decayed usage per user and key", [
        "CREATE INDEX compass_history_user ON compass_history (user_name, ended_at)",
        "CREATE INDEX compass_history_device ON compass_history (device, ended_at)",
        "CREATE INDEX compass_history_key ON compass_history (key, ended_at)",
        """CREATE TABLE compass_usage (
            user_name TEXT NOT NULL,
            key TEXT NOT NULL,
            usage {real} NOT NULL,
            updated_at {real} NOT NULL,
            PRIMARY KEY (user_name, key))""",
    ]),
    (3, "a covering index for usage reports; history pages ordered by (ended_at, id)", [
        # A usage report reads the window's rows from this index alone (no table rows).
        """CREATE INDEX compass_history_report ON compass_history
            (ended_at, key, user_name, device, granted_at, requested_at)""",
        "CREATE INDEX compass_history_page ON compass_history (ended_at, id)",
        "DROP INDEX compass_history_ended",
    ]),
    (4, "per-day sums of history for usage reports (filled from the history by the store)", [
        # One row per period (a day), dimension ('user' or 'device'), key and name: the
        # sums of the history rows requested in that period (compassd.tracker.store.
        # _rollup), and their waits as a histogram (compassd.tracker.store.tally), in
        # hex: (bucket, count) pairs that a write appends to and a report adds up.
        """CREATE TABLE compass_report_periods (
            dim TEXT NOT NULL,
            period {bigint} NOT NULL,
            key TEXT NOT NULL,
            name TEXT NOT NULL,
            leases {bigint} NOT NULL,
            seconds {real} NOT NULL,
            unserved {bigint} NOT NULL,
            waits TEXT NOT NULL,
            PRIMARY KEY (dim, period, key, name))""",
    ]),
]

LATEST = MIGRATIONS[-1][0]

TYPES = {
    "sqlite": {"real": "REAL", "bigint": "INTEGER"},
    "postgresql": {"real": "DOUBLE PRECISION", "bigint": "BIGINT"},
}


def statements(dialect: str, after: int, upto: int = LATEST) -> list[tuple[int, list[str]]]:
    """The migrations past version C{after} up to C{upto}, in C{dialect}'s types."""
    types = TYPES[dialect]
    return [
        (version, [sql.format(**types) for sql in sqls])
        for version, _, sqls in MIGRATIONS
        if after < version <= upto
    ]
