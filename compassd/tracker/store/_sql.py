"""What SQLite and PostgreSQL stores share: the statements, as DB-API calls.

A subclass says how to connect, which placeholder its driver uses, and how to turn the
driver's exceptions into one sentence; everything else (migrations, batches, loading,
history pages) is the same SQL on both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from zope.interface import implementer

from . import _report, _rollup, schema
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
    join_tags,
    split_tags,
)

T = TypeVar("T")

_DEVICE_COLUMNS = (
    "name", "key", "address", "flavor", "tags", "max_lease", "drained", "quarantined",
    "quarantine_reason", "registered_at",
)
_REQUEST_COLUMNS = (
    "id", "key", "user_name", "priority", "tags", "flavor", "arrival", "enqueued_at",
    "lease_wanted", "wait", "deadline", "secret_hash",
)
_LEASE_COLUMNS = (
    "id", "device", "key", "user_name", "request_id", "priority", "tags", "flavor",
    "requested_at", "granted_at", "deadline", "ticket_hash", "redeemed", "secret_hash",
)
_HISTORY_COLUMNS = (
    "id", "user_name", "key", "device", "request_id", "priority", "requested_at",
    "granted_at", "ended_at", "outcome", "detail",
)


def _device_row(d: DeviceRecord) -> tuple[Any, ...]:
    return (d.name, d.key, d.address, d.flavor, join_tags(d.tags), d.max_lease,
            int(d.drained), int(d.quarantined), d.quarantine_reason, d.registered_at)


def _device(row: Sequence[Any]) -> DeviceRecord:
    return DeviceRecord(
        name=row[0], key=row[1], address=row[2], flavor=row[3], tags=split_tags(row[4]),
        max_lease=row[5], drained=bool(row[6]), quarantined=bool(row[7]),
        quarantine_reason=row[8], registered_at=row[9])


def _request_row(r: RequestRecord) -> tuple[Any, ...]:
    return (r.id, r.key, r.user, r.priority, join_tags(r.tags), r.flavor, r.arrival,
            r.enqueued_at, r.lease_wanted, r.wait, r.deadline, r.secret_hash)


def _request(row: Sequence[Any]) -> RequestRecord:
    return RequestRecord(
        id=row[0], key=row[1], user=row[2], priority=row[3], tags=split_tags(row[4]),
        flavor=row[5], arrival=row[6], enqueued_at=row[7], lease_wanted=row[8],
        wait=row[9], deadline=row[10], secret_hash=row[11])


def _lease_row(x: LeaseRecord) -> tuple[Any, ...]:
    return (x.id, x.device, x.key, x.user, x.request_id, x.priority, join_tags(x.tags),
            x.flavor, x.requested_at, x.granted_at, x.deadline, x.ticket_hash,
            int(x.redeemed), x.secret_hash)


def _lease(row: Sequence[Any]) -> LeaseRecord:
    return LeaseRecord(
        id=row[0], device=row[1], key=row[2], user=row[3], request_id=row[4],
        priority=row[5], tags=split_tags(row[6]), flavor=row[7], requested_at=row[8],
        granted_at=row[9], deadline=row[10], ticket_hash=row[11], redeemed=bool(row[12]),
        secret_hash=row[13])


def _history_row(h: HistoryRow) -> tuple[Any, ...]:
    return (h.id, h.user, h.key, h.device, h.request_id, h.priority, h.requested_at,
            h.granted_at, h.ended_at, h.outcome, h.detail)


def _history(row: Sequence[Any]) -> HistoryRow:
    return HistoryRow(
        id=row[0], user=row[1], key=row[2], device=row[3], request_id=row[4],
        priority=row[5], requested_at=row[6], granted_at=row[7], ended_at=row[8],
        outcome=row[9], detail=row[10])


@implementer(IStore)
class SqlStore:
    """The shared implementation; see L{IStore} for what each method promises."""

    dialect = ""
    placeholder = "?"
    description = ""
    _conn: Any = None
    _reads_only = False
    report_period = _rollup.PERIOD
    _span = 0.0  # the longest span of a history row stored (compass_meta's report_span)
    """The length of the periods whose sums usage reports read (L{_rollup}); a store
    opened with another length than its tables were filled with fills them again."""

    # --- what a subclass provides ------------------------------------------------------

    def _connect(self) -> Any:
        """A new DB-API connection in autocommit mode (transactions are explicit)."""
        raise NotImplementedError

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _sentence(self, doing: str, error: BaseException) -> str:
        """One sentence: which store, what failed, and what the tracker does about it."""
        return f"The tracker's store {self.description} could not {doing}: {_reason(error)}."

    def _after_migrate(self, cur: Any) -> None:
        """A check of the opened database (SQLite checks the file's integrity)."""

    def _lock_schema(self, cur: Any) -> None:
        """Serialise migrations between trackers sharing the database."""

    # --- IStore --------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        self._conn = self._guard("open its database", self._connect)
        try:
            self._guard("create or upgrade its schema", self._migrate)
        except StoreError:
            self.close()
            raise

    def reader(self) -> SqlStore:
        """A second store on the same database for long reads (usage reports), so that
        they never hold up the journal's writes: its own connection, made by
        L{open_for_reading} in the thread that uses it, with no schema work and no write
        lock. Only reads may be made with it."""
        other = copy.copy(self)
        other._conn = None
        other._reads_only = True
        return other

    def open_for_reading(self) -> None:
        """Open L{reader}'s connection (the schema is the writer's business)."""
        self.close()
        self._conn = self._guard("open its database for a report", self._connect)

    def load(self) -> Snapshot:
        def load(cur: Any) -> Snapshot:
            meta = dict(self._select(cur, "SELECT name, value FROM compass_meta"))
            epoch = int(meta.get("epoch", "0")) + 1
            meta["epoch"] = str(epoch)
            self._put_meta(cur, {"epoch": str(epoch)})
            live = LiveState(
                devices=tuple(_device(r) for r in self._select(
                    cur, f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM compass_devices"
                    " ORDER BY name")),
                leases=tuple(_lease(r) for r in self._select(
                    cur, f"SELECT {', '.join(_LEASE_COLUMNS)} FROM compass_leases"
                    " ORDER BY granted_at, id")),
                requests=tuple(_request(r) for r in self._select(
                    cur, f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM compass_requests"
                    " ORDER BY arrival, id")),
            )
            return Snapshot(live=live, epoch=epoch, meta=meta)

        return self._transaction("read its state", load)

    def write(self, batch: Batch) -> None:
        span = self._transaction("save the tracker's state",
                                 lambda cur: self._write(cur, batch))
        self._span = max(self._span, span)  # once committed: see _add_history

    def prune(self, before: float) -> int:
        def prune(cur: Any) -> int:
            p = self.placeholder
            cur.execute(f"SELECT {_rollup.TIMES} FROM compass_history WHERE ended_at < {p}",
                        (before,))
            _rollup.add_rows(cur, p, cur.fetchall(), self.report_period, sign=-1)
            cur.execute(f"DELETE FROM compass_history WHERE ended_at < {p}", (before,))
            return int(cur.rowcount or 0)

        return self._transaction("prune old history", prune)

    def history(self, query: HistoryQuery) -> list[HistoryRow]:
        where: list[str] = []
        args: list[Any] = []
        p = self.placeholder
        for column, value in (("user_name", query.user), ("device", query.device),
                              ("key", query.key)):
            if value is not None:
                where.append(f"{column} = {p}")
                args.append(value)
        if query.since is not None:
            where.append(f"ended_at >= {p}")
            args.append(query.since)
        if query.until is not None:
            where.append(f"ended_at < {p}")
            args.append(query.until)
        if query.before is not None:
            # (ended_at, id) < before, with a bound on ended_at alone that an index seeks
            where.append(f"ended_at <= {p} AND (ended_at < {p} OR id < {p})")
            args += [query.before[0], query.before[0], query.before[1]]
        sql = f"SELECT {', '.join(_HISTORY_COLUMNS)} FROM compass_history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY ended_at DESC, id DESC LIMIT {max(1, min(query.limit, 10000))}"
        return self._transaction(
            "read its history",
            lambda cur: [_history(r) for r in self._select(cur, sql, args)])

    def usage(self, query: UsageQuery) -> list[UsageGroup]:
        def usage(cur: Any) -> list[UsageGroup]:
            p = self.placeholder
            span = self._select(cur, f"SELECT value FROM compass_meta WHERE name = {p}",
                                (_rollup.SPAN,))
            found = _rollup.usage(cur, p, self.dialect, query, self.report_period,
                                  float(span[0][0]) if span else 0.0)
            if found is None:
                found = _report.usage(cur, query, self.dialect, p)
            return found

        return self._transaction("add up its history for a usage report", usage)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    # --- the SQL ---------------------------------------------------------------------

    def schema_version(self) -> int:
        """The version the open store's tables are at (0 for a new, empty database)."""
        def version(cur: Any) -> int:
            rows = self._select(cur, "SELECT version FROM compass_schema")
            return int(rows[0][0]) if rows else 0

        return self._transaction("read its schema version", version)

    def _migrate(self) -> None:
        cur = self._conn.cursor()
        self._begin(cur)
        try:
            self._lock_schema(cur)
            cur.execute(schema.VERSION_TABLE)
            rows = self._select(cur, "SELECT version FROM compass_schema")
            version = int(rows[0][0]) if rows else 0
            if version > schema.LATEST:
                raise _TooNew(
                    f"The tracker's store {self.description} has schema version {version},"
                    f" newer than this compass-tracker knows ({schema.LATEST}); run the"
                    " newer compass-tracker, or restore a backup made for this version."
                )
            before = version
            for target, sqls in schema.statements(self.dialect, version):
                for sql in sqls:
                    cur.execute(sql)
                version = target
            self._fill_sums(cur, refill=before < _rollup.SINCE_VERSION)
            if rows:
                cur.execute(f"UPDATE compass_schema SET version = {self.placeholder}",
                            (version,))
            else:
                cur.execute(
                    f"INSERT INTO compass_schema (version) VALUES ({self.placeholder})",
                    (version,))
            cur.execute("COMMIT")
        except BaseException:
            self._rollback(cur)
            raise
        self._after_migrate(cur)

    def _fill_sums(self, cur: Any, refill: bool) -> None:
        """Fill the usage reports' sums from the history when they are new, or were made
        with another period than L{report_period}."""
        p = self.placeholder
        meta = dict(self._select(
            cur, f"SELECT name, value FROM compass_meta WHERE name IN ({p}, {p})",
            (_rollup.PERIOD_META, _rollup.SPAN)))
        made = meta.get(_rollup.PERIOD_META)
        if not refill and made is not None and float(made) == self.report_period:
            self._span = float(meta.get(_rollup.SPAN, "0"))
            return
        self._span = _rollup.rebuild(cur, p, self.report_period)
        self._put_meta(cur, {_rollup.PERIOD_META: repr(self.report_period),
                             _rollup.SPAN: repr(self._span)})

    def _write(self, cur: Any, batch: Batch) -> float:
        """Write C{batch}; the longest span of the history rows it added."""
        if batch.replace is not None:
            for table in ("compass_devices", "compass_leases", "compass_requests"):
                cur.execute(f"DELETE FROM {table}")
            self._upsert(cur, "compass_devices", _DEVICE_COLUMNS,
                         [_device_row(d) for d in batch.replace.devices])
            self._upsert(cur, "compass_leases", _LEASE_COLUMNS,
                         [_lease_row(x) for x in batch.replace.leases])
            self._upsert(cur, "compass_requests", _REQUEST_COLUMNS,
                         [_request_row(r) for r in batch.replace.requests])
        self._apply(cur, "compass_devices", _DEVICE_COLUMNS, batch.devices, _device_row)
        self._apply(cur, "compass_leases", _LEASE_COLUMNS, batch.leases, _lease_row)
        self._apply(cur, "compass_requests", _REQUEST_COLUMNS, batch.requests, _request_row)
        span = self._add_history(cur, batch.history) if batch.history else 0.0
        if batch.meta:
            self._put_meta(cur, batch.meta)
        return span

    def _add_history(self, cur: Any, rows: Sequence[HistoryRow]) -> float:
        """Insert the rows the store does not have yet, and add those to the sums;
        returns their longest span."""
        p = self.placeholder
        insert = (f"INSERT INTO compass_history ({', '.join(_HISTORY_COLUMNS)})"
                  f" VALUES ({', '.join([p] * len(_HISTORY_COLUMNS))})"
                  " ON CONFLICT (id) DO NOTHING")
        new = []
        for h in rows:
            cur.execute(insert, _history_row(h))
            if cur.rowcount == 1:
                new.append((h.requested_at, h.granted_at, h.ended_at, h.key, h.user, h.device))
        if not new:
            return 0.0
        span = _rollup.add_rows(cur, p, new, self.report_period)
        if span > self._span:
            self._put_meta(cur, {_rollup.SPAN: repr(span)})
        return span

    def _apply(self, cur: Any, table: str, columns: tuple[str, ...],
               changes: dict[str, Any], row: Callable[[Any], tuple[Any, ...]]) -> None:
        gone = [(ident,) for ident, record in changes.items() if record is None]
        if gone:
            cur.executemany(
                f"DELETE FROM {table} WHERE {columns[0]} = {self.placeholder}", gone)
        self._upsert(cur, table, columns,
                     [row(record) for record in changes.values() if record is not None])

    def _upsert(self, cur: Any, table: str, columns: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        p = self.placeholder
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        cur.executemany(
            f"INSERT INTO {table} ({', '.join(columns)})"
            f" VALUES ({', '.join([p] * len(columns))})"
            f" ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}",
            rows)

    def _put_meta(self, cur: Any, meta: dict[str, str]) -> None:
        p = self.placeholder
        cur.executemany(
            f"INSERT INTO compass_meta (name, value) VALUES ({p}, {p})"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            sorted(meta.items()))

    def _select(self, cur: Any, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        cur.execute(sql, tuple(args))
        return list(cur.fetchall())

    # --- transactions and errors -------------------------------------------------------

    def _transaction(self, doing: str, body: Callable[[Any], T]) -> T:
        if self._conn is None:
            raise StoreError(
                f"The tracker's store {self.description} is not open; it will be opened"
                " again at the next write.")

        def run() -> T:
            cur = self._conn.cursor()
            self._begin(cur)
            try:
                result = body(cur)
                cur.execute("COMMIT")
            except BaseException:
                self._rollback(cur)
                raise
            return result

        return self._guard(doing, run)

    def _rollback(self, cur: Any) -> None:
        try:
            cur.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass

    def _guard(self, doing: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except _TooNew as e:
            raise StoreError(str(e)) from None
        except self._driver_errors() as e:
            raise StoreError(self._sentence(doing, e)) from e


class _TooNew(Exception):
    pass


def _reason(error: BaseException) -> str:
    """The driver's message, on one line and without a trailing full stop."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.rstrip(".")
