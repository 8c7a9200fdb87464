"""The --store option and its default (compassd.tracker.store.location)."""

from __future__ import annotations

import os

import pytest

from compassd.tracker.store import default_sqlite_path, store_for
from compassd.tracker.store.postgresql import PostgresStore
from compassd.tracker.store.sqlite import SqliteStore


def test_systemd_state_directory_is_the_default_home():
    env = {"STATE_DIRECTORY": "/var/lib/compass-tracker:/var/lib/other", "HOME": "/home/x"}
    assert default_sqlite_path(env) == "/var/lib/compass-tracker/tracker.sqlite"


@pytest.mark.skipif(os.geteuid() != 0, reason="the default for root")
def test_root_without_systemd_uses_the_packaged_state_directory():
    assert default_sqlite_path({"HOME": "/root"}) == "/var/lib/compass-tracker/tracker.sqlite"


@pytest.mark.skipif(os.geteuid() == 0, reason="the default for other users")
def test_a_user_without_systemd_uses_the_xdg_state_directory():
    assert default_sqlite_path({"HOME": "/home/x"}) == (
        "/home/x/.local/state/compassd/tracker.sqlite")
    assert default_sqlite_path({"HOME": "/home/x", "XDG_STATE_HOME": "/s"}) == (
        "/s/compassd/tracker.sqlite")


def test_store_option_values(tmp_path):
    assert store_for("none") is None and store_for("memory") is None
    pg = store_for("postgresql://tracker:pw@db/compass")
    assert isinstance(pg, PostgresStore) and pg.description == "postgresql://tracker@db/compass"
    plain = store_for(str(tmp_path / "a.sqlite"))
    prefixed = store_for(f"sqlite:{tmp_path}/b.sqlite")
    assert isinstance(plain, SqliteStore) and plain.path == str(tmp_path / "a.sqlite")
    assert isinstance(prefixed, SqliteStore) and prefixed.path == str(tmp_path / "b.sqlite")
    default = store_for(None, {"STATE_DIRECTORY": str(tmp_path)})
    assert isinstance(default, SqliteStore)
    assert default.path == str(tmp_path / "tracker.sqlite")
