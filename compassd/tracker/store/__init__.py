"""The tracker's durable state: one small interface (L{IStore}), two databases.

SQLite is the default (one file in the state directory, nothing to set up); PostgreSQL
is for labs that keep state in a database server or run a standby tracker. The
scheduling core stays in memory and authoritative; the shell journals its effects here
(L{Journal}: batched per reactor turn, written in a thread) and loads a L{Snapshot} at
start. L{store_for} turns the tracker's C{--store} option into a store.
"""

from .journal import DEFAULT_RETENTION, Journal
from .location import default_sqlite_path, store_for
from .records import (
    Batch,
    DeviceRecord,
    HistoryQuery,
    HistoryRow,
    IStore,
    LeaseRecord,
    LiveState,
    RequestRecord,
    Snapshot,
    StoreError,
    UsageGroup,
    UsageQuery,
    secret_hash,
)

__all__ = [
    "DEFAULT_RETENTION",
    "Batch",
    "DeviceRecord",
    "HistoryQuery",
    "HistoryRow",
    "IStore",
    "Journal",
    "LeaseRecord",
    "LiveState",
    "RequestRecord",
    "Snapshot",
    "StoreError",
    "UsageGroup",
    "UsageQuery",
    "default_sqlite_path",
    "secret_hash",
    "store_for",
]
