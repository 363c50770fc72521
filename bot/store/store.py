"""The store: the single source of truth (alerts, incidents, timeline, runs...).

On SQLite (the embedded default: one file) or Postgres (replicas on several
machines): see ``bot.store.backend`` for how one SQL text serves both.

Everything the bot knows after a restart comes from here; timers, caches and
chat messages are rebuilt from it. Writes that belong together (a run's state
and its timeline event, a mitigation and the run becoming ``applied``) share one
transaction: use ``with store.transaction():`` around them, it nests.

Records come back as the frozen dataclasses of ``bot.store.records``, never raw rows. Times are aware UTC
datetimes; ``now`` comes from the injected ``clock`` so tests can freeze time.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.base.errors import StoreError
from bot.store.backend import Db, connect, is_postgres_url
from bot.store.incidents import IncidentRecords, Recorded, group_key_for
from bot.store.leases import DEFAULT_LEASE, LeaseRecords
from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.outbox import OutboxRecords
from bot.store.pages import PageRecords
from bot.store.records import (
    CLOSED_STATUSES,
    Approval,
    Event,
    Flag,
    Incident,
    Mitigation,
    Run,
    StoredAlert,
    event_from_row,
    from_text,
    to_text,
    utc_now,
)
from bot.store.releases import ReleaseRecords
from bot.store.runs import RunRecords

__all__ = [
    "Approval", "Event", "Flag", "Incident", "Mitigation", "Run", "Recorded", "Store",
    "StoredAlert", "group_key_for", "CLOSED_STATUSES", "PAUSE_FLAG",
]

PAUSE_FLAG = "paused"


class Store(IncidentRecords, RunRecords, OutboxRecords, LeaseRecords, ReleaseRecords,
            PageRecords):
    """Open (and migrate) the store at ``path``: a SQLite file, ``None`` or ``":memory:"``
    (in memory), or a ``postgresql://`` URL."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.clock = clock
        # A replica whose heartbeat is older than this has lost its claims.
        self.replica_stale_after = DEFAULT_LEASE
        self._lock = threading.RLock()
        self._ensured: set[tuple[str, int]] = set()
        where = ":memory:" if path is None else str(path)
        self.location = _redacted(where)
        self.db: Db
        try:
            self.db = connect(where, busy_timeout_ms=busy_timeout_ms)
        except Exception as exc:
            raise StoreError(
                f"cannot open the store at {self.location}: {one_line(exc)}",
                hint="check the path exists and is writable, or that the Postgres server "
                     "is up and the URL's user may connect",
            ) from exc
        try:
            self._migrate(self.location)
        except StoreError:
            raise
        except self.db.errors as exc:
            raise StoreError(
                f"cannot open the store at {self.location}: {one_line(exc)}",
                hint="check it is an llm-incident database",
            ) from exc

    def failures(self) -> tuple[type[BaseException], ...]:
        """What a store call may raise when the database fails: ours and the driver's."""
        return (StoreError, *self.db.errors)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def now(self) -> datetime:
        return self.clock()

    # --- schema --------------------------------------------------------------------

    def _migrate(self, where: str) -> None:
        if self._current_without_writing():
            return  # the usual start: no write lock needed to see that
        # A migration may rebuild a table others reference (SQLite's ALTER TABLE
        # procedure): foreign keys off meanwhile (a pragma SQLite takes only outside
        # a transaction), checked before the commit. Postgres alters tables in place.
        sqlite = self.db.dialect == "sqlite"
        if sqlite:
            self.db.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.transaction():
                # One write transaction: replicas starting at once on a new Postgres
                # database must not both create (or migrate) the tables.
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                )
                self._migrate_locked(where)
        finally:
            if sqlite:
                self.db.execute("PRAGMA foreign_keys = ON")

    def _current_without_writing(self) -> bool:
        if "schema_migrations" not in self.db.table_names():
            return False
        return self.schema_version == LATEST_VERSION

    def _migrate_locked(self, where: str) -> None:
        current = self.schema_version
        if current > LATEST_VERSION:
            raise StoreError(
                f"the store at {where} has schema version {current}, newer than this "
                f"release understands (up to {LATEST_VERSION})",
                hint="upgrade llm-incident, or point it at another database file",
            )
        if current == LATEST_VERSION:
            return
        # All missing versions in one transaction: a failure leaves the old schema intact.
        version = current
        try:
            with self.transaction():
                for version in range(current + 1, LATEST_VERSION + 1):
                    MIGRATIONS[version - 1](self.db)
                    self.db.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        [version, to_text(self.now())],
                    )
                if self.db.dialect == "sqlite":
                    broken = self.db.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"foreign keys broken: {broken[:3]}")
        except self.failures() as exc:
            raise StoreError(
                f"migrating the store at {where} to version {version} failed "
                f"({one_line(exc.__cause__ or exc)}); it stays at version {current}",
                hint="report this with the database's schema_migrations table",
            ) from exc

    def ensure_schema(self, component: str,
                      steps: Sequence[Callable[[Db], None]]) -> None:
        """Bring ``component``'s own tables up to ``len(steps)`` (its owner calls this
        before first use). All missing steps run in one transaction; a database with a
        newer history for the component than this code knows is refused."""
        key = (component, len(steps))
        if key in self._ensured:
            return
        with self.transaction():
            row = self.db.execute("SELECT version FROM schema_components WHERE component = ?",
                                  [component]).fetchone()
            current = int(row[0]) if row else 0
            if current > len(steps):
                raise StoreError(
                    f"the store's {component} tables are at version {current}, newer than this "
                    f"release understands (up to {len(steps)})",
                    hint="upgrade llm-incident, or point it at another database file")
            for step in steps[current:]:
                step(self.db)
            if current < len(steps):
                self.db.upsert("schema_components", {
                    "component": component, "version": len(steps),
                    "applied_at": to_text(self.now())}, pk="component")
        self._ensured.add(key)

    def probe_write(self) -> None:
        """Write one row and commit: raises ``StoreError`` when the store takes no writes
        (disk full, read-only file, a lock held too long). ``/readyz`` calls it."""
        with self.transaction():
            self.db.upsert("write_probe", {"id": 1, "at": to_text(self.now())}, pk="id")

    def created_at(self) -> datetime | None:
        """When this database was first migrated (its first schema version)."""
        with self._lock:
            row = self.db.execute("SELECT MIN(applied_at) FROM schema_migrations").fetchone()
        return from_text(row[0]) if row and row[0] else None

    @property
    def schema_version(self) -> int:
        row = self.db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """One atomic unit of writes; nested blocks join the outer one (as savepoints)."""
        with self._lock:
            if self.db.in_transaction:
                with self.db.savepoint():
                    yield self
                return
            self.db.begin_write()
            try:
                yield self
                self.db.commit()
            except self.db.errors as exc:
                self._rollback()
                raise StoreError(f"store write failed, nothing was saved: {one_line(exc)}",
                                 hint="check the disk, the database file or the "
                                      "Postgres server") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # A connection already gone means the server rolled the transaction back.
        with contextlib.suppress(*self.db.errors):
            self.db.rollback()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self.db.query(sql, params or [])

    def _next_id(self, table: str, prefix: str) -> tuple[str, int]:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return f"{prefix}-{row[0]}", int(row[0])

    # --- timeline ------------------------------------------------------------------

    def add_event(
        self,
        incident_id: str | None,
        kind: str,
        text: str,
        *,
        actor: str,
        run_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        with self.transaction():
            rows = self._rows(
                "INSERT INTO events (incident_id, run_id, at, kind, actor, text, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                [incident_id, run_id, to_text(self.now()), kind, actor, text,
                 json.dumps(data or {}, default=str, sort_keys=True)],
            )
            return event_from_row(rows[0])

    def newest_event_id(self) -> int:
        """The id of the newest timeline event: a change counter any process can read."""
        with self._lock:
            row = self.db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def timeline(self, incident_id: str | None) -> list[Event]:
        """An incident's events in order; ``None`` = events of no incident (ad hoc, pause)."""
        if incident_id is None:
            rows = self._rows("SELECT * FROM events WHERE incident_id IS NULL ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM events WHERE incident_id = ? ORDER BY id",
                              [incident_id])
        return [event_from_row(r) for r in rows]

    def run_events(self, run_id: str) -> list[Event]:
        return [event_from_row(r) for r in self._rows(
            "SELECT * FROM events WHERE run_id = ? ORDER BY id", [run_id])]

    # --- flags ---------------------------------------------------------------------

    def flag(self, name: str) -> Flag | None:
        rows = self._rows("SELECT * FROM flags WHERE name = ?", [name])
        if not rows:
            return None
        r = rows[0]
        return Flag(r["name"], r["value"], r["set_by"], datetime.fromisoformat(r["set_at"]))

    def set_flag(self, name: str, value: str | None, *, actor: str) -> None:
        """Set a flag; ``value=None`` removes it."""
        with self.transaction():
            if value is None:
                self.db.execute("DELETE FROM flags WHERE name = ?", [name])
            else:
                self.db.upsert(
                    "flags", {"name": name, "value": value, "set_by": actor,
                              "set_at": to_text(self.now())}, pk="name",
                )


def one_line(exc: BaseException) -> str:
    """A database error as one line (Postgres adds DETAIL and LINE parts on their own lines)."""
    return " ".join(str(exc).split())


def _redacted(where: str) -> str:
    """A location fit for logs and errors: a Postgres URL without its password."""
    if not is_postgres_url(where):
        return where
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", where)
