"""Fixtures every tier shares: the store on each backend it runs on.

A test that takes ``store_at`` runs twice, on SQLite (a file in the test's temp
directory) and on a real Postgres (a fresh database on a server the session
starts; see ``postgres_server.py``). ``store_at()`` opens the test's store,
again at the same place on each call, so reopening is tested too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer

from bot.store import Store


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "bot.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def store_at(store_location: str) -> Iterator[Callable[..., Store]]:
    opened: list[Store] = []

    def open_store(*, clock: Callable[[], datetime] | None = None, **kw: Any) -> Store:
        store = Store(store_location, **({"clock": clock} if clock else {}), **kw)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()
