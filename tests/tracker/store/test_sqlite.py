"""The SQLite store (compassd.tracker.store.sqlite) on real files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from compassd.demo.daemons import child_environment
from compassd.tracker.store import Batch, StoreError
from compassd.tracker.store.sqlite import SqliteStore

from .test_sql import device


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "state" / "tracker.sqlite")


def test_the_file_and_its_directory_are_made_in_wal_mode(path):
    store = SqliteStore(path)
    store.open()
    try:
        store.write(Batch(devices={"npu-1": device()}))
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        store.release_lock()


def test_a_second_tracker_on_the_same_file_is_refused_until_the_first_stops(path):
    first = SqliteStore(path)
    first.open()
    second = [sys.executable, "-c",
              "import sys\nfrom compassd.tracker.store.sqlite import SqliteStore\n"
              "from compassd.tracker.store import StoreError\n"
              "try:\n    SqliteStore(sys.argv[1]).open()\n"
              "except StoreError as e:\n    print(e)\n    sys.exit(3)\n", path]
    refused = subprocess.run(second, capture_output=True, text=True, timeout=60,
                             env=child_environment())
    assert refused.returncode == 3, refused.stderr
    assert refused.stdout.strip() == (
        f"The tracker's store {path} is in use by another compass-tracker; stop it, or"
        " give this one its own --store.")
    first.release_lock()
    allowed = subprocess.run(second, capture_output=True, text=True, timeout=60,
                             env=child_environment())
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_a_file_that_is_not_a_database_is_refused_at_open(tmp_path):
    path = tmp_path / "tracker.sqlite"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    store = SqliteStore(str(path))
    with pytest.raises(StoreError) as raised:
        store.open()
    store.release_lock()
    assert str(raised.value).startswith(f"The tracker's store {path} is damaged")
    assert "restore it from a backup, or move it away" in str(raised.value)
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


def test_a_directory_that_cannot_be_made_is_a_sentence(tmp_path):
    (tmp_path / "afile").write_text("")
    store = SqliteStore(str(tmp_path / "afile" / "tracker.sqlite"))
    with pytest.raises(StoreError) as raised:
        store.open()
    assert "cannot be created: its directory" in str(raised.value)
    assert "choose another --store path" in str(raised.value)


def test_a_file_damaged_while_open_fails_writes_with_a_sentence(path):
    store = SqliteStore(path)
    store.open()
    store.write(Batch(devices={"npu-1": device()}))
    store.close()  # the WAL is checkpointed into the file
    with open(path, "r+b") as f:
        f.write(b"\0garbage" * 512)
    with pytest.raises(StoreError) as raised:
        store.open()
        store.write(Batch(devices={"npu-2": device("npu-2")}))
    store.release_lock()
    assert "is damaged" in str(raised.value)
