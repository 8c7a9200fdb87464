"""Stores on real databases: a SQLite file in a temporary directory, and a database on a
real PostgreSQL server the tests start (tests/postgres.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from compassd.tracker.store import IStore
from compassd.tracker.store.postgresql import PostgresStore
from compassd.tracker.store.sqlite import SqliteStore
from tests.postgres import PostgresServer, postgres_server

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = postgres_server()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A new, empty database on the test server."""
    return postgres.create_database(f"compass_test_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[], IStore]]:
    """Makes stores on one location (each call: a tracker starting on it again)."""
    made: list[IStore] = []
    if request.param == "sqlite":
        path = str(tmp_path / "state" / "tracker.sqlite")

        def make() -> IStore:
            for old in made:
                if isinstance(old, SqliteStore):
                    old.release_lock()
            store = SqliteStore(path)
            made.append(store)
            return store
    else:
        url = request.getfixturevalue("pg_url")

        def make() -> IStore:
            store = PostgresStore(url)
            made.append(store)
            return store

    yield make
    for store in made:
        if isinstance(store, SqliteStore):
            store.release_lock()
        else:
            store.close()
