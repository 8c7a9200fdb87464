"""The PostgreSQL store (compassd.tracker.store.postgresql) on a real server."""

from __future__ import annotations

import time

import pytest

from compassd.tracker.store import Batch, StoreError
from compassd.tracker.store.postgresql import PostgresStore, describe
from tests.postgres import postgres_server

from .test_sql import device


def test_the_description_never_shows_the_password():
    assert describe("postgresql://tracker:s3cret@db.lab:5433/compass") == (
        "postgresql://tracker@db.lab:5433/compass")
    assert "s3cret" not in describe("host=db.lab password=s3cret dbname=compass")


def test_a_server_that_does_not_answer_is_a_sentence_at_open(tmp_path):
    store = PostgresStore(f"postgresql://nobody@/compass?host={tmp_path}", connect_timeout=1)
    with pytest.raises(StoreError) as raised:
        store.open()
    text = str(raised.value)
    assert text.startswith("The tracker's store postgresql://nobody@")
    assert "could not open its database:" in text and "\n" not in text


def test_a_server_that_goes_away_fails_writes_and_the_store_opens_again_when_it_is_back():
    server = postgres_server()  # its own: this test stops it
    try:
        store = PostgresStore(server.create_database("comeback"))
        store.open()
        store.write(Batch(devices={"npu-1": device()}))
        server.stop()
        with pytest.raises(StoreError) as raised:
            store.write(Batch(devices={"npu-2": device("npu-2")}))
        assert "could not save the tracker's state" in str(raised.value)
        server.start()
        store.open()
        store.write(Batch(devices={"npu-2": device("npu-2")}))
        assert [d.name for d in store.load().live.devices] == ["npu-1", "npu-2"]
        store.close()
    finally:
        server.remove()


def test_two_trackers_on_one_database_share_its_schema_and_count_their_starts(pg_url):
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    first.open()
    second.open()
    assert first.schema_version() == second.schema_version()
    assert first.load().epoch == 1 and second.load().epoch == 2
    first.close()
    second.close()


def test_one_tracker_holds_the_active_lock_until_its_connection_drops(pg_url):
    from compassd.tracker.store.postgresql import ActiveLock

    first, second = ActiveLock(pg_url, "a.lab:9190"), ActiveLock(pg_url, "b.lab:9190")
    store = PostgresStore(pg_url)
    store.open()  # creates compass_meta, where the active tracker writes its address
    try:
        assert second.active() is None
        assert first.try_take(1000.0) and first.held and first.still_held()
        assert not second.try_take(1001.0) and not second.held
        assert second.active() == "a.lab:9190"
        assert not second.still_held()
        first.close()  # PostgreSQL frees a session lock once its backend sees it gone
        assert not first.still_held()
        end = time.monotonic() + 10
        while not second.try_take(1002.0):
            assert time.monotonic() < end, "the lock was not freed within 10 s"
            time.sleep(0.02)
        assert second.active() == "b.lab:9190"
        assert not first.try_take(1003.0)
        # The address is kept out of the tracker's own state: a restore ignores it.
        assert store.load().live.devices == ()
    finally:
        first.close()
        second.close()
        store.close()


def test_a_database_that_cannot_be_reached_is_a_sentence_when_asking_for_the_lock(tmp_path):
    from compassd.tracker.store.postgresql import ActiveLock

    lock = ActiveLock(f"postgresql://nobody@/compass?host={tmp_path}", "a:9190",
                      connect_timeout=1)
    with pytest.raises(StoreError) as raised:
        lock.try_take(0.0)
    assert str(raised.value).startswith("The tracker's store postgresql://nobody@")
    assert "could not be asked which tracker is active" in str(raised.value)
    assert lock.active() is None and not lock.still_held()
