"""The PostgreSQL store (compassd.tracker.store.postgresql) on a real server."""

from __future__ import annotations

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
