"""What every store promises (compassd.tracker.store._sql), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from compassd.tracker.store import (
    Batch,
    DeviceRecord,
    HistoryQuery,
    HistoryRow,
    LeaseRecord,
    LiveState,
    RequestRecord,
    StoreError,
    UsageQuery,
    schema,
    secret_hash,
)

T0 = 1_790_000_000.0  # seconds since the epoch, in 2026


def device(name: str = "npu-1", **kw) -> DeviceRecord:
    fields = dict(name=name, key="x2", address="10.0.0.5:9091", flavor="compassd",
                  tags=frozenset({"fast", "lab-b"}), max_lease=900.0,
                  registered_at=T0)
    fields.update(kw)
    return DeviceRecord(**fields)


def request(ident: str = "req-1.4", arrival: int = 4, **kw) -> RequestRecord:
    fields = dict(id=ident, key="x2", user="alice", priority=1, tags=frozenset({"fast"}),
                  flavor="compassd", arrival=arrival, enqueued_at=T0 + arrival,
                  lease_wanted=120.0, wait=600.0, deadline=T0 + arrival + 600.0,
                  secret_hash=secret_hash("s" + ident))
    fields.update(kw)
    return RequestRecord(**fields)


def lease(ident: str = "lease-1.3", **kw) -> LeaseRecord:
    fields = dict(id=ident, device="npu-1", key="x2", user="bob", request_id="req-1.2",
                  priority=5, tags=frozenset(), flavor="compassd", requested_at=T0,
                  granted_at=T0 + 1.5, deadline=T0 + 601.5,
                  ticket_hash=secret_hash("ticket"), redeemed=True,
                  secret_hash=secret_hash("secret"))
    fields.update(kw)
    return LeaseRecord(**fields)


def ended(ident: str, user: str = "alice", ended_at: float = T0 + 100, **kw) -> HistoryRow:
    fields = dict(id=ident, user=user, key="x2", requested_at=ended_at - 50,
                  granted_at=ended_at - 40, ended_at=ended_at, outcome="released",
                  device="npu-1", request_id="req-" + ident, priority=1,
                  detail=f"Lease {ident} was released by its holder.")
    fields.update(kw)
    return HistoryRow(**fields)


def opened(make):
    store = make()
    store.open()
    return store


def test_a_new_store_is_empty_and_every_start_counts_an_epoch(make_store):
    store = opened(make_store)
    first = store.load()
    assert first.live == LiveState()
    assert first.epoch == 1
    assert store.schema_version() == schema.LATEST
    assert opened(make_store).load().epoch == 2


def test_the_live_state_comes_back_after_a_restart(make_store):
    store = opened(make_store)
    drained = device("npu-2", drained=True, max_lease=None, tags=frozenset())
    sick = device("npu-3", quarantined=True, quarantine_reason="driver fault 0x12")
    later, earlier = request("req-1.9", arrival=9), request("req-1.5", arrival=5,
                                                            wait=None, deadline=None)
    store.write(Batch(
        devices={"npu-1": device(), "npu-2": drained, "npu-3": sick},
        leases={"lease-1.3": lease()},
        requests={later.id: later, earlier.id: earlier}))

    snapshot = opened(make_store).load()

    assert snapshot.live.devices == (device(), drained, sick)
    assert snapshot.live.leases == (lease(),)
    assert snapshot.live.requests == (earlier, later)  # in arrival order


def test_a_later_record_replaces_an_earlier_one_and_none_deletes(make_store):
    store = opened(make_store)
    store.write(Batch(devices={"npu-1": device(), "npu-2": device("npu-2")},
                      requests={"req-1.4": request()}, leases={"lease-1.3": lease()}))
    store.write(Batch(devices={"npu-1": device(drained=True), "npu-2": None},
                      requests={"req-1.4": None},
                      leases={"lease-1.3": lease(deadline=T0 + 900)}))

    live = opened(make_store).load().live

    assert live.devices == (device(drained=True),)
    assert live.requests == ()
    assert live.leases == (lease(deadline=T0 + 900),)


def test_replace_writes_the_whole_live_state_and_nothing_else(make_store):
    store = opened(make_store)
    store.write(Batch(devices={"npu-1": device(), "old": device("old")},
                      requests={"req-1.4": request()}))
    whole = LiveState(devices=(device("npu-9"),), leases=(lease(device="npu-9"),))
    store.write(Batch(replace=whole, history=[ended("lease-1.1")]))

    again = opened(make_store)
    assert again.load().live == whole
    assert [h.id for h in again.history(HistoryQuery())] == ["lease-1.1"]


def test_a_batch_is_one_transaction(make_store):
    store = opened(make_store)
    broken = ended("lease-1.2", user=None)  # type: ignore[arg-type]
    with pytest.raises(StoreError) as raised:
        store.write(Batch(devices={"npu-1": device()}, history=[broken]))
    assert "could not save the tracker's state" in str(raised.value)
    assert opened(make_store).load().live.devices == ()


def test_a_history_row_is_added_once_even_when_a_batch_is_written_again(make_store):
    store = opened(make_store)
    batch = Batch(history=[ended("lease-1.1"), ended("req-1.2", granted_at=None,
                                                     device=None, outcome="timed-out")])
    store.write(batch)
    store.write(batch)

    rows = store.history(HistoryQuery())
    assert [(r.id, r.kind, r.outcome) for r in rows] == [
        ("req-1.2", "request", "timed-out"), ("lease-1.1", "lease", "released")]
    assert rows[1].waited == pytest.approx(10.0) and rows[1].held == pytest.approx(40.0)
    assert rows[0].waited == pytest.approx(50.0) and rows[0].held == 0.0


def test_history_pages_newest_first_by_user_device_key_and_time(make_store):
    store = opened(make_store)
    rows = [ended(f"lease-1.{i}", user=("alice", "bob")[i % 2], ended_at=T0 + i * 10,
                  device=f"npu-{i % 3}", key=("x2", "cpu")[i % 5 == 0])
            for i in range(1, 31)]
    store.write(Batch(history=rows))

    newest = sorted(rows, key=lambda r: r.ended_at, reverse=True)
    page1 = store.history(HistoryQuery(limit=7))
    page2 = store.history(HistoryQuery(limit=7, before=(page1[-1].ended_at, page1[-1].id)))
    assert page1 + page2 == newest[:14]
    assert store.history(HistoryQuery(user="bob", limit=1000)) == [
        r for r in newest if r.user == "bob"]
    assert store.history(HistoryQuery(device="npu-2", key="x2", limit=1000)) == [
        r for r in newest if r.device == "npu-2" and r.key == "x2"]
    assert store.history(HistoryQuery(since=T0 + 100, until=T0 + 150, limit=1000)) == [
        r for r in newest if T0 + 100 <= r.ended_at < T0 + 150]


def test_prune_deletes_only_history_that_ended_before_the_cutoff(make_store):
    store = opened(make_store)
    store.write(Batch(history=[ended(f"lease-1.{i}", ended_at=T0 + i) for i in range(10)]))

    assert store.prune(T0 + 4) == 4
    assert sorted(r.ended_at - T0 for r in store.history(HistoryQuery())) == list(
        range(4, 10))


def test_meta_values_are_kept(make_store):
    store = opened(make_store)
    store.write(Batch(meta={"tracker": "a:9190"}))
    assert opened(make_store).load().meta["tracker"] == "a:9190"


# --- migrations ----------------------------------------------------------------------


def _first_release_store(store, version: int = 1) -> None:
    """Make C{store}'s database what an earlier schema left (C{version}), with rows."""
    conn = store._connect()
    p = store.placeholder
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute(schema.VERSION_TABLE)
    for _, sqls in schema.statements(store.dialect, 0, upto=version):
        for sql in sqls:
            cur.execute(sql)
    cur.execute(f"INSERT INTO compass_schema (version) VALUES ({p})", (version,))
    cur.execute(
        "INSERT INTO compass_devices (name, key, address, flavor, tags, max_lease, drained,"
        " quarantined, quarantine_reason, registered_at)"
        f" VALUES ({', '.join([p] * 10)})",
        ("npu-1", "x2", "10.0.0.5:9091", "compassd", "fast,lab-b", 900.0, 1, 0, "", T0))
    cur.execute(
        "INSERT INTO compass_history (id, user_name, key, device, request_id, priority,"
        " requested_at, granted_at, ended_at, outcome, detail)"
        f" VALUES ({', '.join([p] * 11)})",
        ("lease-7", "alice", "x2", "npu-1", "req-6", 1, T0, T0 + 1, T0 + 60, "expired",
         "Lease lease-7 on npu-1 expired after 59 s."))
    cur.execute("COMMIT")
    conn.close()


def test_a_store_from_the_first_schema_is_migrated_and_keeps_its_rows(make_store):
    old = make_store()
    _first_release_store(old)

    store = opened(make_store)

    assert store.schema_version() == schema.LATEST
    assert store.load().live.devices == (device(drained=True),)
    [row] = store.history(HistoryQuery(user="alice"))
    assert (row.id, row.outcome, row.held) == ("lease-7", "expired", 59.0)
    # The second schema's usage table is there and writable.
    conn = store._conn
    conn.cursor().execute(
        "INSERT INTO compass_usage (user_name, key, usage, updated_at)"
        f" VALUES ({', '.join([store.placeholder] * 4)})", ("alice", "x2", 59.0, T0))


def _indexes(store) -> set[str]:
    cur = store._conn.cursor()
    if store.dialect == "sqlite":
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'compass_history' AND sql IS NOT NULL")
    else:
        cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'compass_history'"
                    " AND indexname NOT LIKE '%pkey'")
    return {row[0] for row in cur.fetchall()}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_store_gets_the_report_indexes_and_its_history_adds_up(
    make_store, version):
    old = make_store()
    _first_release_store(old, version)

    store = opened(make_store)

    assert store.schema_version() == schema.LATEST == 4
    assert _indexes(store) == {
        "compass_history_user", "compass_history_device", "compass_history_key",
        "compass_history_report", "compass_history_page"}
    [group] = store.usage(UsageQuery(since=T0, until=T0 + 3600))
    assert (group.name, group.leases, group.seconds, group.wait_p50) == (
        "alice", 1, 59.0, 1.0)
    # A week around it adds up whole days from the per-day sums, which the upgrade
    # filled from the history it had (waits in buckets: 1 s is within 4.5 %).
    [group] = store.usage(UsageQuery(since=T0 - 3 * 86400, until=T0 + 4 * 86400))
    assert (group.name, group.leases, group.seconds) == ("alice", 1, 59.0)
    assert group.wait_p50 == pytest.approx(1.0, rel=0.045) and group.wait_p50 != 1.0
    assert [r.id for r in store.history(HistoryQuery(before=(T0 + 61, "")))] == ["lease-7"]


def test_a_store_newer_than_this_tracker_is_refused(make_store):
    store = opened(make_store)
    store._conn.cursor().execute(
        f"UPDATE compass_schema SET version = {store.placeholder}", (schema.LATEST + 1,))

    with pytest.raises(StoreError) as raised:
        opened(make_store)

    assert f"has schema version {schema.LATEST + 1}, newer than this" in str(raised.value)
