"""A usage report added up by the database: one statement, the same SQL on SQLite and
PostgreSQL, that reads the window's history rows once and returns at most three rows per
group (never the rows themselves).

The window's rows (found by the covering index on ``ended_at``) are sorted once, per
group by wait (a window function): ``ROW_NUMBER`` gives each grant its rank, and sums over
the whole group give its leases, board-seconds, unserved requests and grants. Only the
rows at rank 1 and at the nearest ranks of the median and the 95th percentile
(``ceil(q * n / 100)``, in integers) come back. What the store may not have (leases held
now, rows not yet written) goes into a temporary table first, and so do the users'
accounts for a report by account; both are emptied before the transaction ends.

L{compassd.tracker.accounting.usage_groups} is the same report in Python, over rows in
memory; the tests hold the two to the same numbers.
"""

from __future__ import annotations

from typing import Any

from . import schema
from .records import UsageGroup, UsageQuery

EXTRA = "compass_report_extra"
ACCOUNTS = "compass_report_accounts"

_EXTRA_COLUMNS = ("id", "user_name", "key", "device", "requested_at", "granted_at",
                  "ended_at")
_ROW_COLUMNS = ", ".join(_EXTRA_COLUMNS[1:])

RANKS = (50, 95)
"""The percentiles of the wait a report gives (nearest rank)."""


def statement(query: UsageQuery, placeholder: str, extra: bool, accounts: bool
              ) -> tuple[str, dict[str, Any]]:
    """The SELECT of L{usage} and its named arguments. C{extra}, C{accounts}: whether
    the temporary tables have rows to use."""
    named = ":{}" if placeholder == "?" else "%({})s"
    since, until, user, key = (named.format(n) for n in ("since", "until", "user", "key"))
    args: dict[str, Any] = {"since": float(query.since), "until": float(query.until)}

    def source(table: str) -> str:
        sql = f"SELECT {_ROW_COLUMNS} FROM {table} WHERE ended_at >= {since}"
        if query.user is not None:
            sql += f" AND user_name = {user}"
            args["user"] = query.user
        if query.key is not None:
            sql += f" AND key = {key}"
            args["key"] = query.key
        if query.by == "device":
            sql += " AND device IS NOT NULL"
        return sql

    rows = source("compass_history")
    if extra:
        rows += " UNION ALL " + source(EXTRA)
    name = {"user": "s.user_name", "account": "s.user_name", "key": "s.key",
            "device": "s.device"}[query.by]
    join = ""
    if query.by == "account" and accounts:
        name = "COALESCE(x.account, s.user_name)"
        join = f" LEFT JOIN {ACCOUNTS} x ON x.user_name = s.user_name"
    clipped = (
        f"SELECT s.key AS key, {name} AS name, s.requested_at, s.granted_at, s.ended_at,"
        f" CASE WHEN s.ended_at < {until} THEN s.ended_at ELSE {until} END AS e,"
        f" CASE WHEN s.granted_at > {since} THEN s.granted_at ELSE {since} END AS b"
        f" FROM ({rows}) s{join}")
    # a lease counts if any of it is inside the window, or it began at its start
    counts = f"granted_at IS NOT NULL AND (e > b OR (e = b AND granted_at >= {since}))"
    flagged = (
        "SELECT key, name, granted_at - requested_at AS waited,"
        f" CASE WHEN {counts} THEN 1 ELSE 0 END AS leased,"
        f" CASE WHEN {counts} THEN e - b ELSE 0.0 END AS seconds,"
        f" CASE WHEN granted_at IS NULL AND ended_at < {until} THEN 1 ELSE 0 END"
        " AS unserved,"
        f" CASE WHEN granted_at >= {since} AND granted_at <= {until} THEN 1 ELSE 0 END"
        " AS grant_here"
        f" FROM ({clipped}) c")
    ranked = (
        "SELECT key, name, waited, grant_here,"
        " ROW_NUMBER() OVER w AS rn, SUM(grant_here) OVER w AS n,"
        " SUM(leased) OVER w AS leases, SUM(seconds) OVER w AS seconds,"
        " SUM(unserved) OVER w AS unserved"
        f" FROM ({flagged}) f"
        " WINDOW w AS (PARTITION BY key, name ORDER BY grant_here DESC, waited"
        " ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)")
    wanted = " OR ".join(["rn = 1"] + [f"rn = ({q} * n + 99) / 100" for q in RANKS])
    sql = (f"SELECT key, name, leases, seconds, unserved, n, rn, waited FROM ({ranked}) r"
           f" WHERE {wanted}")
    return sql, args


def usage(cur: Any, query: UsageQuery, dialect: str, placeholder: str
          ) -> list[UsageGroup]:
    """L{compassd.tracker.store.IStore.usage} in the transaction of C{cur}."""
    real = schema.TYPES[dialect]["real"]
    p = placeholder
    if query.extra:
        cur.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {EXTRA} (id TEXT, user_name TEXT,"
            f" key TEXT, device TEXT, requested_at {real}, granted_at {real},"
            f" ended_at {real})")
        cur.execute(f"DELETE FROM {EXTRA}")
        cur.executemany(
            f"INSERT INTO {EXTRA} ({', '.join(_EXTRA_COLUMNS)})"
            f" VALUES ({', '.join([p] * len(_EXTRA_COLUMNS))})",
            [(r.id, r.user, r.key, r.device, r.requested_at, r.granted_at, r.ended_at)
             for r in query.extra])
        # A row the store already has counts once, as the store's.
        cur.execute(
            f"DELETE FROM {EXTRA} WHERE EXISTS (SELECT 1 FROM compass_history h"
            f" WHERE h.id = {EXTRA}.id)")
    accounts = query.by == "account" and bool(query.accounts)
    if accounts:
        cur.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {ACCOUNTS} (user_name TEXT PRIMARY KEY,"
            " account TEXT NOT NULL)")
        cur.execute(f"DELETE FROM {ACCOUNTS}")
        cur.executemany(f"INSERT INTO {ACCOUNTS} (user_name, account) VALUES ({p}, {p})",
                        sorted(dict(query.accounts).items()))
    sql, args = statement(query, placeholder, bool(query.extra), accounts)
    cur.execute(sql, args)
    found = cur.fetchall()
    if query.extra:
        cur.execute(f"DELETE FROM {EXTRA}")
    if accounts:
        cur.execute(f"DELETE FROM {ACCOUNTS}")
    return groups(found)


def groups(found: list[Any]) -> list[UsageGroup]:
    """The L{UsageGroup}s from the statement's rows (up to three per group)."""
    by_group: dict[tuple[str, str], dict[str, Any]] = {}
    for key, name, leases, seconds, unserved, n, rn, waited in found:
        group = by_group.setdefault((key, name), {
            "leases": int(leases or 0), "seconds": float(seconds or 0.0),
            "unserved": int(unserved or 0), "waits": int(n or 0)})
        for q in RANKS:
            if group["waits"] and int(rn) == (q * group["waits"] + 99) // 100:
                group[f"wait_p{q}"] = float(waited)
    return [
        UsageGroup(key=key, name=name, leases=g["leases"], seconds=g["seconds"],
                   unserved=g["unserved"], waits=g["waits"], wait_p50=g.get("wait_p50"),
                   wait_p95=g.get("wait_p95"))
        for (key, name), g in sorted(by_group.items())
        if g["leases"] or g["unserved"]
    ]
